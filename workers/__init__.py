"""This deployment's worker side: its RQ cron file. The jobs and the worker class live in
the ``rindle`` package (``rq worker --worker-class rindle.worker.RindleWorker``)."""
