"""The browser app (``python app.py``, ``sdtoolkit-app``): invert, edit, sweep and edit generated images in a
page, on the Python API (:mod:`sdtoolkit.api`) and nothing below it. docs/app.md describes every control."""
