"""The daemon side: ZeroMQ broker, job/task state machine, run profiles, launchers.

Not built yet (issue 3 "The daemon", issue 9 "Run profiles"). ``cistemd``
currently offers ``--help`` only.
"""
