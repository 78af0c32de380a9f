/* A bump region for transient protobuf-c trees (issue 7: xDS update memory).
 *
 * An xDS update decodes its DiscoveryResponse and, for the assembly, clones
 * and rewrites many messages; all of that is garbage once the new snapshot is
 * built. Allocated from malloc, those pieces interleave with the long-lived
 * allocations made meanwhile (resource records, the snapshot's arena blocks),
 * so the freed pages cannot go back to the kernel. A region instead takes its
 * memory from its own anonymous mappings (256 KiB chunks; a request larger
 * than a quarter chunk gets a mapping of its own) and returns all of it with
 * one sk_pbregion_release().
 *
 * sk_pbregion_allocator() is a ProtobufCAllocator: 16-byte aligned
 * allocations, free() a no-op. Every tree unpacked with it (and every field
 * replaced in such a tree) must only be freed through that same allocator
 * or, normally, not at all: release drops everything. Never pass its memory
 * to free().
 *
 * Sanitizer builds (ASan) use one malloc per allocation instead, all freed
 * at release, so that out-of-bounds accesses and stray free()s of region
 * memory are still reported.
 *
 * Not thread-safe (one region per update, on the main thread). */
#ifndef SKIFF_PBREGION_H
#define SKIFF_PBREGION_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

struct sk_pbregion_chunk;

struct sk_pbregion {
    ProtobufCAllocator pa; /* allocator_data = the region */
    unsigned char *cur, *end; /* free space of the current chunk */
    struct sk_pbregion_chunk *chunks; /* every mapping (or, sanitized, every block) */
    size_t mapped;                    /* bytes currently mapped */
    size_t used;                      /* bytes handed out (rounded) */
};

#define SK_PBREGION_CHUNK (256u * 1024)

void sk_pbregion_init(struct sk_pbregion *r);
/* Unmaps everything; the region is empty and usable again. */
void sk_pbregion_release(struct sk_pbregion *r);
/* Drops everything allocated so far but keeps the current chunk mapped for
 * the next allocations (per-item scratch use without a syscall per item). */
void sk_pbregion_reset(struct sk_pbregion *r);
/* Raw allocation (16-byte aligned; NULL when out of memory). n == 0 gives a
 * valid non-NULL pointer. */
void *sk_pbregion_alloc(struct sk_pbregion *r, size_t n);

/* (Re-points the allocator at r: a region moved by a struct copy keeps working
 * through the copy, as long as only one of the copies is used.) */
static inline ProtobufCAllocator *sk_pbregion_allocator(struct sk_pbregion *r)
{
    r->pa.allocator_data = r;
    return &r->pa;
}

#endif
