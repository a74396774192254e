"""The built-in plugins.

Each is an ordinary plugin module registered through the ``ensemblecert`` entry-point group in
``pyproject.toml``, exactly as a third-party package registers its own, and imports only the public
``ensemblecert`` API.
"""
