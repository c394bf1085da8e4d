/*-------------------------------------------------------------------------
 *
 * shmem.h
 *	  Shared memory of dlq: one slot per database for the background
 *	  worker's heartbeat, read by etl_status.
 *
 *-------------------------------------------------------------------------
 */
#ifndef DLQ_SHMEM_H
#define DLQ_SHMEM_H

#include "datatype/timestamp.h"
#include "storage/lwlock.h"

#define DLQ_MAX_DATABASES 64
#define DLQ_LAST_ERROR_LEN 256
#define DLQ_STEP_LEN 32

typedef struct DlqWorkerSlot
{
	Oid			dboid;			/* InvalidOid: slot free */
	int			pid;			/* 0: no worker running for this database */
	TimestampTz started_at;
	TimestampTz last_heartbeat; /* end of the last naptime round */
	/* what the last round did */
	int64		last_expired;
	int64		last_purged;
	int64		last_recovered;
	int64		last_retried;
	int64		last_alerts;
	/* since the worker started */
	int64		rounds;
	int64		errors;
	TimestampTz last_error_at;
	char		last_error[DLQ_LAST_ERROR_LEN];
	/* appended by the worker (worker.c) */
	int64		last_events_purged;
	TimestampTz last_round_start;
	int64		starts;			/* workers started for this database */

	/*
	 * Progress of the round under way, like pg_stat_progress_vacuum: the
	 * step ("" between rounds), the queue it works on ("" for every queue),
	 * when it started, the messages it has handled so far, and the time the
	 * round has slept for dlq.worker_cost_limit (worker.c).
	 */
	char		step[DLQ_STEP_LEN];
	char		step_queue[NAMEDATALEN];
	TimestampTz step_started_at;
	int64		step_done;
	bool		throttled;		/* sleeping for the cost limit right now */
	int64		throttle_sleep_us;	/* this round so far */
	int64		last_throttle_sleep_us; /* the last finished round */
} DlqWorkerSlot;

typedef struct DlqShared
{
	LWLock	   *lock;			/* protects everything below */
	int			launcher_pid;
	DlqWorkerSlot slots[DLQ_MAX_DATABASES];
} DlqShared;

/* NULL unless the library was preloaded. */
extern DlqShared *dlq_shared;

extern void dlq_shmem_request(void);

/*
 * Copy the slot of a database into *slot.  Returns false when the library
 * is not preloaded (no shared memory) or the database has no slot.
 */
extern bool dlq_worker_slot_copy(Oid dboid, DlqWorkerSlot *slot);

/*
 * The slot of a database, created if absent; NULL when all are taken.
 * Caller holds dlq_shared->lock exclusively.
 */
extern DlqWorkerSlot *dlq_worker_slot_locked(Oid dboid, bool create);

#endif							/* DLQ_SHMEM_H */
