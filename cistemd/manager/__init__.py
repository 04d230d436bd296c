"""The daemon side of cistemd.

* :mod:`~cistemd.manager.home` -- ``$CISTEM_HOME``: runtime sockets (0700), logs,
  keys, the one-daemon lock;
* :mod:`~cistemd.manager.keys` -- CURVE keys, credentials files, the allow-list;
* :mod:`~cistemd.manager.state` -- the pure job/task state machine;
* :mod:`~cistemd.manager.store` -- jobs, tasks, results and events in the project DB;
* :mod:`~cistemd.manager.daemon` -- the broker loop that ties them together;
* :mod:`~cistemd.manager.profiles` / :mod:`~cistemd.manager.launchers` -- run
  profiles and the processes they start (local now; SSH and schedulers next).
"""
