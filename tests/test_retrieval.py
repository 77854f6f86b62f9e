import numpy as np

from eclip.encode import recall_at_k


def test_recall_counts_any_listing_of_the_same_catalog():
    # 3 queries, 4 gallery items; scores chosen by hand.
    query = np.eye(4)[:3]
    gallery = np.array([
        [0.1, 0.9, 0.0, 0.0],   # g0: group A, most similar to q1
        [0.9, 0.0, 0.0, 0.2],   # g1: group B, most similar to q0
        [0.5, 0.1, 0.3, 0.0],   # g2: group A
        [0.0, 0.0, 0.1, 0.9],   # g3: group C
    ]).T.T
    q_groups = ["A", "B", "C"]
    g_groups = ["A", "B", "A", "C"]
    # q0 scores: g0 .1, g1 .9, g2 .5, g3 0  -> ranking g1(B) g2(A) g0(A) g3 : first A at rank 2
    # q1 scores: g0 .9, g1 0, g2 .1, g3 0   -> ranking g0(A) g2(A) ...: B (g1) ties g3 at rank 3-4
    # q2 scores: g0 0, g1 0, g2 .3, g3 .1   -> ranking g2(A) g3(C): C at rank 2
    r = recall_at_k(query, gallery, q_groups, g_groups, ks=(1, 2, 4))
    assert r[1] == 0.0
    assert r[2] == 2 / 3
    assert r[4] == 1.0


def test_recall_is_one_for_identical_embeddings_and_chunking_does_not_matter():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    groups = list(range(50))
    assert recall_at_k(x, x, groups, groups, ks=(1,))[1] == 1.0
    y = rng.normal(size=(50, 8))
    a = recall_at_k(x, y, groups, groups, ks=(1, 5), chunk=7)
    b = recall_at_k(x, y, groups, groups, ks=(1, 5), chunk=1000)
    assert a == b
