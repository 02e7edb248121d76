"""The data set the demo sends: river's Phishing rows (1,250 web pages, 9 features).

The example models in ``containers/examples`` were trained on the same rows.

>>> rows = phishing_rows()
>>> len(rows), sorted(rows[0][0])[:2], type(rows[0][1])
(1250, ['age_of_domain', 'anchor_from_other_domain'], <class 'bool'>)
"""

from __future__ import annotations

__all__ = ["phishing_rows"]


def phishing_rows() -> list[tuple[dict[str, float], bool]]:
    """The Phishing rows as (features, is_phishing), in the order river ships them."""
    from river import datasets

    return [({k: float(v) for k, v in x.items()}, bool(y)) for x, y in datasets.Phishing()]
