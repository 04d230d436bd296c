"""The daemon side of cistemd.

* :mod:`~cistemd.manager.home` -- ``$CISTEM_HOME``: runtime sockets (0700), logs,
  keys, the one-daemon lock;
* :mod:`~cistemd.manager.keys` -- CURVE keys, credentials files, the allow-list;
* :mod:`~cistemd.manager.state` -- the pure job/task state machine;
* :mod:`~cistemd.manager.store` -- jobs, tasks, results and events in the project DB;
* :mod:`~cistemd.manager.daemon` -- the broker loop that ties them together;
* :mod:`~cistemd.manager.profiles` / :mod:`~cistemd.manager.profile_store` -- run
  profiles (cisTEM's model) and where they are kept, cisTEM's text format in and out;
* :mod:`~cistemd.manager.launchers` -- the Launcher interface and local workers;
  :mod:`~cistemd.manager.ssh` (paramiko) and :mod:`~cistemd.manager.schedulers`
  (SLURM, SGE, LSF, PBS) start workers elsewhere;
* :mod:`~cistemd.manager.client_ops` -- what client requests do to a project.
"""
