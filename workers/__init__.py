"""RQ job functions (``workers.jobs``); run them with ``rq worker rindle``."""
