"""The SDK's plumbing: signed transport, offline verification, log proofs (not public API)."""
