"""Recall@10 of one space of a built (or building) index against exact search, at a few nprobe.

    PYTHONPATH=src python benchmarks/index_recall_check.py

Used on the 10 M index of docs/BENCHMARKS.md ("Index at scale: 10 M listings"): the image space's
IVF-SQ8 (``image.faiss``) against exact inner products over its float16 ``image.npy`` (read in
blocks of 500,000 rows), 100 near-duplicate queries (listings' own vectors plus noise 0.02,
made unit length), FAISS on one thread, the search parameters of ``search.compressed``.
"""
import faiss, numpy as np, time, glob
from eclip.search.compressed import search_params
d = glob.glob('/tmp/scale_10m/index/.tmp-*/')[0]
t = time.time()
index = faiss.read_index(d + 'image.faiss')
vec = np.load(d + 'image.npy', mmap_mode='r')
rng = np.random.default_rng(1)
rows = rng.choice(vec.shape[0], 100, replace=False)
q = vec[rows].astype(np.float32) + 0.02 * rng.standard_normal((100, vec.shape[1])).astype(np.float32)
q /= np.linalg.norm(q, axis=1, keepdims=True)
best = np.full((100, 10), -np.inf, np.float32); ids = np.zeros((100, 10), np.int64)
vids = np.load(d + 'vids.npy', mmap_mode='r')
for s in range(0, vec.shape[0], 500_000):
    block = np.asarray(vec[s:s + 500_000], dtype=np.float32)
    sc = q @ block.T
    top = np.argpartition(-sc, 10, axis=1)[:, :10]
    cand = np.concatenate([best, np.take_along_axis(sc, top, 1)], 1)
    cid = np.concatenate([ids, np.asarray(vids[s:s + 500_000])[top]], 1)
    o = np.argsort(-cand, 1)[:, :10]
    best, ids = np.take_along_axis(cand, o, 1), np.take_along_axis(cid, o, 1)
print('exact done', round(time.time() - t, 1), flush=True)
faiss.omp_set_num_threads(1)
for nprobe in (4, 16, 64):
    p, keep = search_params('ivf_sq8', nprobe, None)
    _, got = index.search(q, 10, params=p)
    print('nprobe', nprobe, 'recall@10', np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, ids)]), flush=True)
