"""This deployment's periodic jobs, for RQ's cron: ``rq cron workers/cron.py``.

rindle's maintenance (the expiry sweep, the orphan sweep) at the intervals the settings
give; register the app's own periodic jobs here too.
"""

from rindle.cron import register_maintenance

register_maintenance()
