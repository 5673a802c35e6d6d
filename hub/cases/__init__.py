"""Case (办件) rules without I/O: the per-department stage machine and working-day deadlines."""
