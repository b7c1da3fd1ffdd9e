"""Reporting: read VisionAD-layout results, build leaderboards, plots, heatmap galleries and exports.

Modules:
    results      scan ``RESULTS_DIR/<run>/<algo>_<desc>/<dataset>/<epoch>/`` trees into typed records
    leaderboard  epoch selection, per-dataset tables, means over datasets, ranks, md / csv / json
    plots        bar chart of a leaderboard (matplotlib Agg)
    gallery      heatmap gallery PNG from saved ``heatmaps.pk`` / ``best.pk``
    export       submission export (JSON / CSV) in the schema of ``docs/submission_schema.md``
"""
