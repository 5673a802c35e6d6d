"""Case dispatch (办件): rules.py (pure deciders), store.py (reads and writes), service.py (the
servicer: read → decide → write), streams.py (cursor subscriptions), supervision.py (time
limits), calendar.py (working days)."""
