"""dask collections computed by depengine.dask.get give what dask.threaded.get gives."""

from __future__ import annotations

import operator

import numpy as np
import pytest

pytest.importorskip("dask")

import dask
import dask.array as da
import dask.bag as db
import dask.threaded

import depengine.dask as dd

pytestmark = pytest.mark.usefixtures("dask_bridge")  # the bridge's engines: see conftest


def both(*collections, **kwargs):
    """The results of dask.threaded and of depengine for the same collections."""
    ours = dask.compute(*collections, scheduler=dd.get, **kwargs)
    theirs = dask.compute(*collections, scheduler=dask.threaded.get, **kwargs)
    return ours, theirs


ARRAYS = {
    "issue example": lambda x: ((x + x.T) * 2 - 1).mean(axis=0),
    "std": lambda x: x.std(),
    "matmul": lambda x: (x @ x.T).sum(axis=1),
    "slicing and rechunk": lambda x: x[::3, 5:].rechunk((7, 11)).max(axis=1),
    "cumsum": lambda x: x.cumsum(axis=1)[:, -1],
    "argmin and where": lambda x: da.where(x > 0.5, x, -x).argmin(axis=0),
    "map_overlap": lambda x: x.map_overlap(lambda b: b * 2, depth=1, boundary="reflect").sum(),
    "linalg": lambda x: da.linalg.qr(x.rechunk((40, 40)))[1].sum(),
}


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_dask_array(name):
    x = da.random.RandomState(7).random_sample((40, 40), chunks=(10, 10))
    (ours,), (theirs,) = both(ARRAYS[name](x))
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_dask_array_persist_and_store():
    x = da.arange(100, chunks=10)
    (y,) = dask.persist(x * 2, scheduler=dd.get)
    np.testing.assert_array_equal(y.compute(scheduler=dd.get), np.arange(100) * 2)
    target = np.zeros(100)
    da.store(x + 1, target, scheduler=dd.get, lock=False)
    np.testing.assert_array_equal(target, np.arange(100) + 1)


def test_dask_bag():
    b = db.from_sequence(range(200), npartitions=7)
    words = db.from_sequence(["a", "b", "a", "c", "b", "a"] * 10, npartitions=4)
    collections = (
        b.map(lambda v: v * 3).filter(lambda v: v % 2).sum(),
        b.fold(operator.add),
        words.frequencies(),
        b.groupby(lambda v: v % 5).map(lambda kv: (kv[0], sum(kv[1]))),
        b.foldby(lambda v: v % 3, operator.add, 0),
        b.distinct().count(),
    )
    ours, theirs = both(*collections)
    assert [_sorted(r) for r in ours] == [_sorted(r) for r in theirs]


def _sorted(result):
    return sorted(result) if isinstance(result, list) else result


def test_dask_delayed():
    @dask.delayed
    def f(a, b=1):
        return a * 10 + b

    @dask.delayed(nout=2)
    def split(v):
        return v, -v

    xs = [f(i, b=i) for i in range(20)]
    p, n = split(f(sum(xs[:5])))
    total = dask.delayed(sum)([p, n, *xs])
    nested = dask.delayed(dict)(a=xs[3], b=[xs[4], {"c": xs[5]}])
    ours, theirs = both(total, nested, xs[7], p)
    assert ours == theirs and ours[1] == {"a": 33, "b": [44, {"c": 55}]}


def test_dask_dataframe():
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    ddf_mod = pytest.importorskip("dask.dataframe")
    rng = np.random.default_rng(3)
    pdf = pd.DataFrame({"k": rng.integers(0, 7, 500), "v": rng.random(500), "w": rng.integers(0, 100, 500)})
    other = pd.DataFrame({"k": range(7), "name": [f"n{i}" for i in range(7)]})
    df = ddf_mod.from_pandas(pdf, npartitions=6)
    odf = ddf_mod.from_pandas(other, npartitions=2)
    collections = (
        df.groupby("k").agg({"v": "mean", "w": "sum"}),
        df.merge(odf, on="k").groupby("name").v.count(),
        df[df.v > 0.5].w.describe(),
        df.assign(z=df.v * df.w).z.cumsum(),
        df.k.value_counts(),
    )
    ours, theirs = both(*collections)
    for a, b in zip(ours, theirs, strict=True):
        check = pd.testing.assert_series_equal if isinstance(a, pd.Series) else pd.testing.assert_frame_equal
        check(a.sort_index(), b.sort_index())
