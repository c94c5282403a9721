"""The search service (`imgindex serve`): an index version -> HTTP search, items, images, a page.

config.py (ServiceConfig), app.py (create_app: routes, errors, middleware), api.py (/api/*),
state.py (the loaded version, hot reload), batching.py (query embedding batches and cache),
images.py (thumbnails), metrics.py (Prometheus), auth.py (the token), models.py (JSON bodies),
static/ (the page).
"""
