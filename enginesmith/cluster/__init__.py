"""Where jobs run: local child processes (the default) or a Ray cluster (`--cluster ray[://HOST:PORT]`).

- jobs.py: a Job (an importable function, JSON-able arguments, the device kind it needs, whether it measures),
  and what came of it (Done);
- devices.py: the device kinds a machine is (cpu, cpu:avx2, cpu:vnni, cpu:amx, gpu:H100 ...);
- local.py: the default executor, one child process per job on this machine;
- ray_cluster.py: the same jobs as Ray tasks, placed by device kind, one measuring job per node;
- executor.py: `executor_for(cluster)` picks one.
Nothing here imports the pipeline or the benchmarks: jobs name their functions by "module:function".
"""
