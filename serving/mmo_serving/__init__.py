"""mmo serving: the Ray Serve app, the expert-parallel engine and the built-in model.

Importing this package is cheap: torch and ray are imported by the modules that use them.
"""
