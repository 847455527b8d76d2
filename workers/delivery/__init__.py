"""Getting every task run exactly once: leases sent with the tasks, heartbeats, the sweeper
that sends lost work again, queue names and depths, giving up on a poison task.
"""
