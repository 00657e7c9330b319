"""Progress bars of a run: ``progress_factory(enabled)`` makes ``progress(total, desc)``
bars (tqdm, or silent ones) with ``bar.update_to(n, **postfix)`` and ``bar.close()``, the
interface every method in `experiments.methods` reports to."""

from __future__ import annotations


class _NoBar:
    def update_to(self, n, **postfix):
        pass

    def close(self):
        pass


class _Bar:
    def __init__(self, total, desc):
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def update_to(self, n, **postfix):
        self._bar.update(max(0, min(n, self._bar.total) - self._bar.n))
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)

    def close(self):
        self._bar.close()


def progress_factory(enabled):
    """``progress(total, desc)`` making tqdm bars, or silent ones when not enabled."""
    if not enabled:
        return lambda total, desc: _NoBar()
    return _Bar
