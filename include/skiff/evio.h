/* Watch a socket for exactly `ev` (EV_READ | EV_WRITE, 0 = none), touching
 * libev only when that changes. Returns true if the watcher was changed. */
#ifndef SKIFF_EVIO_H
#define SKIFF_EVIO_H

#include <ev.h>
#include <stdbool.h>

static inline bool sk_io_set(struct ev_loop *loop, ev_io *io, int ev)
{
    if ((io->events & (EV_READ | EV_WRITE)) == ev && (ev_is_active(io) || !ev))
        return false;
    ev_io_stop(loop, io);
    ev_io_modify(io, ev);
    if (ev)
        ev_io_start(loop, io);
    return true;
}

#endif
