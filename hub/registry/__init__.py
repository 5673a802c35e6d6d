"""The member registry (接入单位目录): members, roles, keys, bundles, look-ups."""
