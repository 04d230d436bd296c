"""The worker process: connect to the daemon, heartbeat, pull tasks, run kernels.

Not built yet (issue 3 "The daemon").
"""
