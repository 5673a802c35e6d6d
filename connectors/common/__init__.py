"""What the department connector and the issuer sync share: config readers, local state, the
retry loop, status reports.
"""
