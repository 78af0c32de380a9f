/* Watch a socket for exactly `ev` (EV_READ | EV_WRITE, 0 = none), touching
 * libev only when that changes. Returns true if the watcher was changed.
 * An event already pending on the watcher (reported by the backend, or fed
 * with ev_feed_event for bytes TLS or a parser holds, which never make the
 * socket readable again) survives the change where still wanted: ev_io_stop
 * alone would drop it. */
#ifndef SKIFF_EVIO_H
#define SKIFF_EVIO_H

#include <ev.h>
#include <stdbool.h>

static inline bool sk_io_set(struct ev_loop *loop, ev_io *io, int ev)
{
    if ((io->events & (EV_READ | EV_WRITE)) == ev && (ev_is_active(io) || !ev))
        return false;
    int pend = ev_is_pending(io) ? ev_clear_pending(loop, io) & ev : 0;
    ev_io_stop(loop, io);
    ev_io_modify(io, ev);
    if (ev)
        ev_io_start(loop, io);
    if (pend)
        ev_feed_event(loop, io, pend);
    return true;
}

#endif
