/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The virtio_blk guest's benchmark mode (blk_bench=read|write): a timed batch of IN or
 * OUT requests with up to 5 in flight. See ../README.md ("virtio_blk", benchmark mode).
 */
#ifndef VIRTIO_BLK_BENCH_H
#define VIRTIO_BLK_BENCH_H

#include <stdint.h>

#include "virtio.h"

/* 1 if the command line has a blk_bench= word (the benchmark is requested). */
int blk_bench_requested(void);

/*
 * Runs the batch the command line describes on queue `vq` of `dev` (a disk of `capacity`
 * sectors) and prints its `blk bench ...` line. Returns NULL when the batch ran (request
 * errors are counted in the line), or the word the guest should end with ("timeout",
 * "failed") when a request timed out or the parameters cannot be used.
 */
const char *blk_bench(struct virtio_dev *dev, struct virtq *vq, uint64_t capacity, uint64_t timeout_ms);

/* With blk_bench_probe: times MMIO register reads (each a VM exit to the VMM) and an empty loop. */
void blk_bench_probe(struct virtio_dev *dev);

#endif
