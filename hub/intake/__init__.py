"""One-window intake (一窗受理): items, prepared cases with their checklist, certificate pulls and
checks.
"""
