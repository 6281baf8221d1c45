"""Running job rows: the guarded runner, the queues (rq or in-process), the worker, and
the one function per job kind. Each job runs with the settings of the process that runs it.
"""
