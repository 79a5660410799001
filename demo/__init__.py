"""The example app's upload page (not part of rindle): Uppy's Dashboard with its tus
plugin, served at ``/`` by ``app.py`` when ``RINDLE_DEMO=1`` (the dev stack sets it).

- ``demo.page``: the Flask blueprint (the page and Uppy's bundle).
- ``demo.assets``: where the bundle lives and its installer (``python -m demo.assets``).
"""
