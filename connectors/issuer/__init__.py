"""Issuer tools: bulk certificate import (CSV/JSONL) and the issuer database sync."""
