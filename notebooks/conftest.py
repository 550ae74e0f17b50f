"""nbval settings: stderr (warnings, progress bars) is not part of a notebook's checked output."""


def pytest_collectstart(collector):
    if collector.path.suffix == ".ipynb":
        collector.skip_compare += ("stderr", "text/html")
