"""Reports: what one or several runs' certification results say, as tables (terminal, Markdown, LaTeX) and figures.

:mod:`.runs` reads a run directory back; :mod:`.tables` compares runs side by side; :mod:`.figures` draws certified
accuracy against radius and the distribution of the lower confidence bounds; :mod:`.writer` puts them in one
folder with a Markdown summary. ``ensemblecert report RUN_DIR ...`` and the report stage at the end of a run use them.
"""
