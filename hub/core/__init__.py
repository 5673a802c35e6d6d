"""The frame every feature stands on: config, tables, admission, the per-call runtime, RPC
declarations, the audit log.
"""
