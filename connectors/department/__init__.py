"""The department connector (前置机): dispatched cases into the department's inbox, status rows
out through a durable outbox.
"""
