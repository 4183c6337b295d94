"""Ray: curation and training beyond one machine (docs/cluster.md). Imported only where a Ray address is given,
so the single-machine path never loads Ray.

    ray_cluster.py  connecting to a cluster, curation's per-file jobs as Ray tasks, the shared-storage check, and
                    a local cluster on loopback with token authentication (run as
                    `python -m lavie_model.cluster.ray_cluster`)
    ray_train.py    `lavie train` on the cluster: the unchanged trainer in every worker of a Ray Train
                    TorchTrainer, restarts from the last checkpoint, rank 0's reports back to the driver

Nothing is imported here.
"""
