"""The `xhub` command (cli/main.py): hub administration and the auditor's tools, on top of hub
and connectors.
"""
