/*-------------------------------------------------------------------------
 *
 * counts.c
 *	  dlq.counts, the per-queue message counts that etl_status reads: the
 *	  statement trigger dlq.count_messages() on dlq.messages, the
 *	  transaction callbacks that write each transaction's changes, and the
 *	  reset on TRUNCATE.  dlq.recount(), which rebuilds the table from the
 *	  messages, is PL/pgSQL in dlq--1.0.sql.
 *
 *	  Counts are kept, never counted from the messages: the trigger adds
 *	  each statement's changes to one row per (queue, state, shard), the
 *	  shard being the writer's backend id modulo 64, so that concurrent
 *	  writers do not queue up behind one hot row (backend ids are handed out
 *	  lowest first, so up to 64 concurrent writers never share one).
 *	  etl_status then reads one small row per state and writing backend of
 *	  each queue, and writes nothing, so it also runs on a hot standby.
 *
 *	  A message in a slot of the ring of closed messages (dlq.messages.slot
 *	  > 0, 1.1) is counted in shards of its own, DLQ_SLOT_SHARD: emptying
 *	  the slot (dlq.slot_empty) then reads what it removes from dlq.counts
 *	  instead of scanning the partition, and takes those rows away.
 *
 *	  The statement trigger only adds each statement's net change per
 *	  (queue, state) to a list in backend memory, tagged with the
 *	  subtransaction nesting level; a subtransaction's entries are dropped
 *	  when it aborts and handed to its parent when it commits.  Just before
 *	  the transaction commits (or is prepared) the list is written to
 *	  dlq.counts, one row per (queue, state) for this backend's shard.  So a
 *	  transaction that stores 20,000 messages updates each counts row once,
 *	  not 20,000 times (which, within one transaction, would grow a HOT
 *	  chain that every later update walks), and holds the row's lock only
 *	  while it commits.
 *
 *	  The same trigger keeps each queue's cumulative totals (1.1): stored,
 *	  replayed, replay_failed, resolved, discarded, expired, in columns of
 *	  the same dlq.counts rows, written by the same statement at commit, so
 *	  that a dlq_store pays a few more columns in the update it made anyway
 *	  and no statement of its own.
 *	  They are told apart by what each row of a statement was and became
 *	  (counts_classify); the totals go to the row of an open state (shard
 *	  >= 0), which neither emptying a slot nor dlq.recount() takes away.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_enum.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/backendid.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "utils/uuid.h"

#include "dlq.h"


static SPIPlanPtr count_plan = NULL;
static SPIPlanPtr count_insert_plan = NULL;
static Oid	count_plan_status_type = InvalidOid;
static bool count_plan_totals = false;
static SPIPlanPtr truncate_plan = NULL;
static SPIPlanPtr truncate_keep_plan = NULL;

/* The cumulative totals, in the order of their dlq.counts columns. */
typedef enum CountTotal
{
	TOTAL_STORED,
	TOTAL_REPLAYED,
	TOTAL_REPLAY_FAILED,
	TOTAL_RESOLVED,
	TOTAL_DISCARDED,
	TOTAL_EXPIRED,
	NUM_TOTALS
} CountTotal;

/* The labels of dlq.status the totals look at, as OIDs of one enum type. */
typedef struct CountStates
{
	Oid			type;
	Oid			pending;
	Oid			replaying;
	Oid			review;
	Oid			resolved;
	Oid			expired;
} CountStates;

static CountStates count_states;

typedef struct CountDelta
{
	char		queue[DLQ_MAX_NAME_BYTES + 1];
	Oid			status;			/* enum label OID */
	int			slot;			/* dlq.messages.slot, 0 for open messages */
	int			level;			/* subtransaction nesting level */
	int64		n;
	bool		has_new_last;
	TimestampTz new_last;
	bool		has_old_last;
	TimestampTz old_last;
	int64		totals[NUM_TOTALS];	/* cumulative totals to add */
} CountDelta;

/* What the trigger reads of a row of dlq.messages. */
typedef struct CountRow
{
	int64		id;
	char		queue[DLQ_MAX_NAME_BYTES + 1];
	int			queuelen;
	Oid			status;
	int			slot;
	int32		occurrences;
	TimestampTz failed;			/* last_failed_at, DT_NOBEGIN when NULL */
	bool		has_rrid;
	pg_uuid_t	rrid;			/* replay_request_id */
	bool		has_resolution; /* resolution IS NOT NULL (1.1, dlq_resolve) */
} CountRow;

/* Attribute numbers of the columns read, 0 for one the table lacks. */
typedef struct CountAtts
{
	int			id;
	int			queue;
	int			status;
	int			failed;
	int			slot;
	int			occurrences;
	int			rrid;
	int			resolution;
} CountAtts;

/* This transaction's changes not yet written to dlq.counts (TopMemoryContext). */
static CountDelta *pending_counts = NULL;
static int	npending_counts = 0;
static int	maxpending_counts = 0;
static Oid	pending_status_type = InvalidOid;

/*
 * Set once this transaction's counts were written at pre-commit: changes
 * made later by other pre-commit callbacks (dlq_capture writes its buffered
 * rows there) are written at once.
 */
static bool counts_flushed_at_commit = false;

static int
counts_shard(void)
{
#if PG_VERSION_NUM >= 170000
	return MyProcNumber % DLQ_COUNT_SHARDS;
#else
	return MyBackendId % DLQ_COUNT_SHARDS;
#endif
}

/* The entry for (queue, status, slot, level), created if absent. */
static CountDelta *
counts_entry(const char *queue, int queuelen, Oid status, int slot, int level)
{
	CountDelta *d;

	for (int i = 0; i < npending_counts; i++)
	{
		d = &pending_counts[i];
		if (d->status == status && d->slot == slot && d->level == level &&
			strncmp(d->queue, queue, queuelen) == 0 && d->queue[queuelen] == '\0')
			return d;
	}
	if (npending_counts == maxpending_counts)
	{
		maxpending_counts = Max(16, maxpending_counts * 2);
		if (pending_counts == NULL)
			pending_counts = MemoryContextAlloc(TopMemoryContext,
												sizeof(CountDelta) * maxpending_counts);
		else
			pending_counts = repalloc(pending_counts, sizeof(CountDelta) * maxpending_counts);
	}
	d = &pending_counts[npending_counts++];
	memset(d, 0, sizeof(CountDelta));
	memcpy(d->queue, queue, Min(queuelen, DLQ_MAX_NAME_BYTES));
	d->status = status;
	d->slot = slot;
	d->level = level;
	return d;
}

static void
counts_merge(CountDelta *into, const CountDelta *from)
{
	into->n += from->n;
	for (int t = 0; t < NUM_TOTALS; t++)
		into->totals[t] += from->totals[t];
	if (from->has_new_last && (!into->has_new_last || from->new_last > into->new_last))
	{
		into->has_new_last = true;
		into->new_last = from->new_last;
	}
	if (from->has_old_last && (!into->has_old_last || from->old_last > into->old_last))
	{
		into->has_old_last = true;
		into->old_last = from->old_last;
	}
}

/* The OIDs of the labels of dlq.status (type) that the totals look at. */
static void
counts_states(Oid type)
{
	const char *labels[5] = {"pending", "replaying", "review", "resolved", "expired"};
	Oid		   *oids[5] = {&count_states.pending, &count_states.replaying,
		&count_states.review, &count_states.resolved, &count_states.expired};

	if (count_states.type == type)
		return;
	for (int i = 0; i < 5; i++)
	{
		HeapTuple	tup = SearchSysCache2(ENUMTYPOIDNAME, ObjectIdGetDatum(type),
										  CStringGetDatum(labels[i]));

		if (!HeapTupleIsValid(tup))
			elog(ERROR, "dlq.status lacks the label \"%s\"", labels[i]);
		*oids[i] = ((Form_pg_enum) GETSTRUCT(tup))->oid;
		ReleaseSysCache(tup);
	}
	count_states.type = type;
}

static bool
counts_open(Oid status)
{
	return status == count_states.pending || status == count_states.replaying ||
		status == count_states.review;
}

static void
counts_atts(TupleDesc desc, CountAtts *a)
{
	a->id = SPI_fnumber(desc, "message_id");
	a->queue = SPI_fnumber(desc, "queue");
	a->status = SPI_fnumber(desc, "status");
	a->failed = SPI_fnumber(desc, "last_failed_at");
	a->slot = SPI_fnumber(desc, "slot");	/* none in 1.0 */
	a->occurrences = SPI_fnumber(desc, "occurrences");
	a->rrid = SPI_fnumber(desc, "replay_request_id");
	a->resolution = SPI_fnumber(desc, "resolution");	/* 1.1, if any */
	if (a->id <= 0 || a->queue <= 0 || a->status <= 0 || a->failed <= 0 ||
		a->occurrences <= 0 || a->rrid <= 0)
		elog(ERROR, "dlq.messages lacks a column the counts need");
	if (a->slot <= 0)
		a->slot = 0;
	if (a->resolution <= 0)
		a->resolution = 0;
}

static void
counts_read(TupleTableSlot *tts, const CountAtts *a, CountRow *r)
{
	bool		isnull;
	text	   *queue = DatumGetTextPP(slot_getattr(tts, a->queue, &isnull));
	Datum		d;

	r->id = DatumGetInt64(slot_getattr(tts, a->id, &isnull));
	r->queuelen = Min(VARSIZE_ANY_EXHDR(queue), DLQ_MAX_NAME_BYTES);
	memcpy(r->queue, VARDATA_ANY(queue), r->queuelen);
	r->queue[r->queuelen] = '\0';
	r->status = DatumGetObjectId(slot_getattr(tts, a->status, &isnull));
	d = slot_getattr(tts, a->failed, &isnull);
	r->failed = isnull ? DT_NOBEGIN : DatumGetTimestampTz(d);
	r->slot = a->slot > 0 ? DatumGetInt32(slot_getattr(tts, a->slot, &isnull)) : 0;
	r->occurrences = DatumGetInt32(slot_getattr(tts, a->occurrences, &isnull));
	d = slot_getattr(tts, a->rrid, &isnull);
	r->has_rrid = !isnull;
	if (!isnull)
		memcpy(&r->rrid, DatumGetUUIDP(d), sizeof(pg_uuid_t));
	r->has_resolution = false;
	if (a->resolution > 0)
	{
		(void) slot_getattr(tts, a->resolution, &isnull);
		r->has_resolution = !isnull;
	}
}

/*
 * Add one row to this transaction's counts: sign +1 for a new row, -1 for
 * an old one.  *last caches the entry used last (bulk statements mostly
 * touch one queue and state).
 */
static void
counts_add(const CountRow *r, int sign, int level, int *last)
{
	CountDelta *d = *last >= 0 ? &pending_counts[*last] : NULL;

	if (d == NULL || d->status != r->status || d->slot != r->slot ||
		d->level != level || strcmp(d->queue, r->queue) != 0)
	{
		d = counts_entry(r->queue, r->queuelen, r->status, r->slot, level);
		*last = d - pending_counts;
	}
	d->n += sign;
	if (sign > 0 && (!d->has_new_last || r->failed > d->new_last))
	{
		d->has_new_last = true;
		d->new_last = r->failed;
	}
	if (sign < 0 && (!d->has_old_last || r->failed > d->old_last))
	{
		d->has_old_last = true;
		d->old_last = r->failed;
	}
}

/*
 * Add n to a total of queue, in the entry of the open state status (slot
 * 0, so in a shard that stays; see the file header).
 */
static void
counts_total(const CountRow *r, Oid status, CountTotal total, int64 n, int level)
{
	CountDelta *d = counts_entry(r->queue, r->queuelen, status, 0, level);

	d->totals[total] += n;
}

/*
 * The totals one updated message adds, from what it was (o) and became
 * (n).  Only a change from an open state counts: closed messages moving to
 * another slot or to 'archived' are neither resolved nor expired again.
 *
 *	 -> expired									expired
 *	 replaying -> resolved						replayed (dlq_ack); resolved
 *												when dlq_resolve set a
 *												resolution; replay_failed when
 *												a new failure came with it (a
 *												nack merged into a duplicate)
 *	 pending/review -> resolved					replayed when a replay request
 *												re-applied it to its table (its
 *												replay_request_id changed),
 *												else resolved (dlq_resolve)
 *	 replaying -> pending/review				replay_failed (nack, timeout)
 *	 pending/review -> pending/review, with a	replay_failed (re-apply to the
 *	   new replay_request_id and failure		table failed)
 *	 open, occurrences + k						stored + k (a dedup fold; or a
 *												failed replay merged into it)
 */
static void
counts_classify(const CountRow *o, const CountRow *n, int level)
{
	bool		new_request;

	if (!counts_open(o->status))
		return;
	new_request = n->has_rrid &&
		(!o->has_rrid || memcmp(&o->rrid, &n->rrid, sizeof(pg_uuid_t)) != 0);
	if (n->status == count_states.expired)
		counts_total(n, o->status, TOTAL_EXPIRED, 1, level);
	else if (n->status == count_states.resolved)
	{
		CountTotal	t;

		if (n->has_resolution)
			t = TOTAL_RESOLVED;
		else if (o->status == count_states.replaying)
			t = n->failed > o->failed ? TOTAL_REPLAY_FAILED : TOTAL_REPLAYED;
		else
			t = new_request ? TOTAL_REPLAYED : TOTAL_RESOLVED;
		counts_total(n, o->status, t, 1, level);
	}
	else if (n->status == count_states.pending || n->status == count_states.review)
	{
		if (o->status == count_states.replaying ||
			(new_request && n->failed > o->failed))
			counts_total(n, o->status, TOTAL_REPLAY_FAILED, 1, level);
		if (n->occurrences > o->occurrences && o->status != count_states.replaying)
			counts_total(n, o->status, TOTAL_STORED, n->occurrences - o->occurrences, level);
	}
}

static int
counts_row_cmp(const void *a, const void *b)
{
	int64		x = ((const CountRow *) a)->id;
	int64		y = ((const CountRow *) b)->id;

	return x < y ? -1 : x > y ? 1 : 0;
}

/*
 * Pair the rest of an UPDATE's old and new rows by message_id (see
 * counts_update): both sides sorted, then merged.
 */
static void
counts_pair_sorted(Tuplestorestate *oldrows, Tuplestorestate *newrows,
				   TupleTableSlot *ots, TupleTableSlot *nts, const CountAtts *a,
				   CountRow *o, CountRow *n, int level)
{
	CountRow   *olds = palloc(sizeof(CountRow) * 16);
	CountRow   *news = palloc(sizeof(CountRow) * 16);
	int			no = 0,
				nn = 0,
				maxo = 16,
				maxn = 16;
	int			i = 0,
				j = 0,
				last = -1;

	/* The pair in hand did not match: both go into the lists. */
	olds[no++] = *o;
	news[nn++] = *n;
	while (tuplestore_gettupleslot(oldrows, true, false, ots))
	{
		if (no == maxo)
			olds = repalloc(olds, sizeof(CountRow) * (maxo *= 2));
		counts_read(ots, a, &olds[no++]);
	}
	while (tuplestore_gettupleslot(newrows, true, false, nts))
	{
		if (nn == maxn)
			news = repalloc(news, sizeof(CountRow) * (maxn *= 2));
		counts_read(nts, a, &news[nn++]);
	}
	qsort(olds, no, sizeof(CountRow), counts_row_cmp);
	qsort(news, nn, sizeof(CountRow), counts_row_cmp);
	for (int k = 0; k < no; k++)
		counts_add(&olds[k], -1, level, &last);
	for (int k = 0; k < nn; k++)
		counts_add(&news[k], 1, level, &last);
	while (i < no && j < nn)
	{
		if (olds[i].id < news[j].id)
			i++;
		else if (olds[i].id > news[j].id)
			j++;
		else
			counts_classify(&olds[i++], &news[j++], level);
	}
	pfree(olds);
	pfree(news);
}

/*
 * An UPDATE's transition tables: each old row counted -1, each new row +1,
 * and each message's change classified for the totals.  The executor adds
 * an updated row's old and new versions to the two tables together (also
 * when the row moves to another partition: the old version as it leaves
 * one, the new as it enters the other), so they pair up in order; should a
 * pair ever not match, the rest is paired by message_id instead.
 */
static void
counts_update(Tuplestorestate *oldrows, Tuplestorestate *newrows, TupleDesc desc,
			  int level)
{
	TupleTableSlot *ots = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	TupleTableSlot *nts = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	CountAtts	a;
	CountRow	o,
				n;
	int			last = -1;

	counts_atts(desc, &a);
	tuplestore_rescan(oldrows);
	tuplestore_rescan(newrows);
	for (;;)
	{
		bool		has_old = tuplestore_gettupleslot(oldrows, true, false, ots);
		bool		has_new = tuplestore_gettupleslot(newrows, true, false, nts);

		if (has_old)
			counts_read(ots, &a, &o);
		if (has_new)
			counts_read(nts, &a, &n);
		if (has_old && has_new && o.id == n.id)
		{
			counts_add(&o, -1, level, &last);
			counts_add(&n, 1, level, &last);
			counts_classify(&o, &n, level);
			continue;
		}
		if (has_old && has_new)
			counts_pair_sorted(oldrows, newrows, ots, nts, &a, &o, &n, level);
		else if (has_old)
		{
			/* more old rows than new ones (never seen): counted only */
			counts_add(&o, -1, level, &last);
			while (tuplestore_gettupleslot(oldrows, true, false, ots))
			{
				counts_read(ots, &a, &o);
				counts_add(&o, -1, level, &last);
			}
		}
		else if (has_new)
		{
			counts_add(&n, 1, level, &last);
			while (tuplestore_gettupleslot(newrows, true, false, nts))
			{
				counts_read(nts, &a, &n);
				counts_add(&n, 1, level, &last);
			}
		}
		break;
	}
	ExecDropSingleTupleTableSlot(ots);
	ExecDropSingleTupleTableSlot(nts);
}

/*
 * The rows of an INSERT (sign +1: each open message a message stored) or a
 * DELETE (sign -1: an open message deleted is discarded).  Closed messages
 * inserted or deleted (a purge, rows moved by hand) count in no total.
 */
static void
counts_rows(Tuplestorestate *rows, TupleDesc desc, int sign, int level)
{
	TupleTableSlot *tts = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	CountAtts	a;
	CountRow	r;
	int			last = -1;

	counts_atts(desc, &a);
	tuplestore_rescan(rows);
	while (tuplestore_gettupleslot(rows, true, false, tts))
	{
		CountDelta *d;

		counts_read(tts, &a, &r);
		counts_add(&r, sign, level, &last);
		d = &pending_counts[last];
		/* open messages only: a closed one inserted or deleted is moved or purged */
		if (!counts_open(r.status))
			continue;
		if (r.slot == 0)
			d->totals[sign > 0 ? TOTAL_STORED : TOTAL_DISCARDED]++;
		else
			counts_total(&r, r.status, sign > 0 ? TOTAL_STORED : TOTAL_DISCARDED, 1, level);
	}
	ExecDropSingleTupleTableSlot(tts);
}

/*
 * Merge the entries of every subtransaction level into one per (queue,
 * state): at pre-commit every subtransaction has committed.
 */
static void
counts_fold_levels(void)
{
	int			n = 0;

	for (int i = 0; i < npending_counts; i++)
	{
		CountDelta *d = &pending_counts[i];
		int			j;

		for (j = 0; j < n; j++)
			if (pending_counts[j].status == d->status &&
				pending_counts[j].slot == d->slot &&
				strcmp(pending_counts[j].queue, d->queue) == 0)
				break;
		if (j < n)
			counts_merge(&pending_counts[j], d);
		else if (j != i)
			pending_counts[n++] = *d;
		else
			n++;
	}
	npending_counts = n;
}

/*
 * Whether dlq.counts (in schema nsp) has the totals' columns: not before
 * ALTER EXTENSION dlq UPDATE to 1.1, when the counts alone are kept.
 */
static bool
counts_have_totals(Oid nsp)
{
	Oid			relid = OidIsValid(nsp) ? get_relname_relid("counts", nsp) : InvalidOid;

	return OidIsValid(relid) && get_attnum(relid, "stored_total") != InvalidAttrNumber;
}

/*
 * The plans that write dlq.counts, prepared again when dlq.status was
 * recreated (its OID is a parameter type) or the totals' columns appeared.
 */
static void
counts_prepare(bool totals)
{
	Oid			types[5 + NUM_TOTALS] = {TEXTOID, pending_status_type, INT2OID, INT8OID,
	TIMESTAMPTZOID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID};

	if (count_plan != NULL && count_plan_status_type == pending_status_type &&
		count_plan_totals == totals)
		return;
	if (count_plan != NULL)
	{
		SPI_freeplan(count_plan);
		SPI_freeplan(count_insert_plan);
	}
	count_plan = count_insert_plan = NULL;
	if (totals)
	{
		/* The shard's row exists but for a writer's first change: update it. */
		count_plan = dlq_prepare_kept(
									"UPDATE dlq.counts c SET n = c.n OPERATOR(pg_catalog.+) $4,"
									"  last_failed_at = GREATEST(c.last_failed_at, $5),"
									"  stored_total = c.stored_total OPERATOR(pg_catalog.+) $6,"
									"  replayed_total = c.replayed_total OPERATOR(pg_catalog.+) $7,"
									"  replay_failed_total = c.replay_failed_total OPERATOR(pg_catalog.+) $8,"
									"  resolved_total = c.resolved_total OPERATOR(pg_catalog.+) $9,"
									"  discarded_total = c.discarded_total OPERATOR(pg_catalog.+) $10,"
									"  expired_total = c.expired_total OPERATOR(pg_catalog.+) $11"
									" WHERE c.queue OPERATOR(pg_catalog.=) $1"
									" AND c.status OPERATOR(pg_catalog.=) $2"
									" AND c.shard OPERATOR(pg_catalog.=) $3",
									5 + NUM_TOTALS, types);
		count_insert_plan = dlq_prepare_kept(
										   "INSERT INTO dlq.counts AS c (queue, status, shard, n, last_failed_at,"
										   "  stored_total, replayed_total, replay_failed_total, resolved_total,"
										   "  discarded_total, expired_total)"
										   " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
										   " ON CONFLICT (queue, status, shard) DO UPDATE"
										   " SET n = c.n OPERATOR(pg_catalog.+) excluded.n,"
										   "  last_failed_at = GREATEST(c.last_failed_at, excluded.last_failed_at),"
										   "  stored_total = c.stored_total OPERATOR(pg_catalog.+) excluded.stored_total,"
										   "  replayed_total = c.replayed_total OPERATOR(pg_catalog.+) excluded.replayed_total,"
										   "  replay_failed_total = c.replay_failed_total OPERATOR(pg_catalog.+) excluded.replay_failed_total,"
										   "  resolved_total = c.resolved_total OPERATOR(pg_catalog.+) excluded.resolved_total,"
										   "  discarded_total = c.discarded_total OPERATOR(pg_catalog.+) excluded.discarded_total,"
										   "  expired_total = c.expired_total OPERATOR(pg_catalog.+) excluded.expired_total",
										   5 + NUM_TOTALS, types);
	}
	else
	{
		count_plan = dlq_prepare_kept(
									"UPDATE dlq.counts c SET n = c.n OPERATOR(pg_catalog.+) $4,"
									"  last_failed_at = GREATEST(c.last_failed_at, $5)"
									" WHERE c.queue OPERATOR(pg_catalog.=) $1"
									" AND c.status OPERATOR(pg_catalog.=) $2"
									" AND c.shard OPERATOR(pg_catalog.=) $3",
									5, types);
		count_insert_plan = dlq_prepare_kept(
										   "INSERT INTO dlq.counts AS c (queue, status, shard, n, last_failed_at)"
										   " VALUES ($1, $2, $3, $4, $5)"
										   " ON CONFLICT (queue, status, shard) DO UPDATE"
										   " SET n = c.n OPERATOR(pg_catalog.+) excluded.n,"
										   "  last_failed_at = GREATEST(c.last_failed_at, excluded.last_failed_at)",
										   5, types);
	}
	count_plan_status_type = pending_status_type;
	count_plan_totals = totals;
}

/* Write this transaction's counts to dlq.counts, as the extension owner. */
static void
counts_flush(void)
{
	Oid			nsp = get_namespace_oid("dlq", true);
	Oid			relid = OidIsValid(nsp) ? get_relname_relid("counts", nsp) : InvalidOid;
	HeapTuple	tup;
	Oid			owner;
	Oid			caller;
	int			caller_sec_context;
	bool		totals;

	/* The extension was dropped in this transaction: nothing to count. */
	if (!OidIsValid(relid) ||
		!HeapTupleIsValid(tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid))))
	{
		npending_counts = 0;
		return;
	}
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	totals = get_attnum(relid, "stored_total") != InvalidAttrNumber;

	counts_fold_levels();

	/*
	 * As the owner of dlq.counts.  Every name and operator below is
	 * schema-qualified, so the search_path need not be pinned (which would
	 * cost more than the update itself).
	 */
	PushActiveSnapshot(GetTransactionSnapshot());
	GetUserIdAndSecContext(&caller, &caller_sec_context);
	SetUserIdAndSecContext(owner, caller_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	SPI_connect();
	counts_prepare(totals);

	for (int i = 0; i < npending_counts; i++)
	{
		CountDelta *d = &pending_counts[i];
		bool		newer = d->has_new_last &&
			(!d->has_old_last || d->new_last > d->old_last);
		Datum		values[5 + NUM_TOTALS];
		char		nulls[5 + NUM_TOTALS] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
		bool		any_total = false;

		for (int t = 0; t < NUM_TOTALS; t++)
		{
			values[5 + t] = Int64GetDatum(d->totals[t]);
			any_total |= d->totals[t] != 0;
		}
		if (d->n == 0 && !newer && !(totals && any_total))
			continue;
		values[0] = CStringGetTextDatum(d->queue);
		values[1] = ObjectIdGetDatum(d->status);
		values[2] = Int16GetDatum((int16) (d->slot > 0 ?
											DLQ_SLOT_SHARD(d->slot, counts_shard()) :
											counts_shard()));
		values[3] = Int64GetDatum(d->n);
		if (newer && d->new_last != DT_NOBEGIN)
			values[4] = TimestampTzGetDatum(d->new_last);
		else
			nulls[4] = 'n';
		dlq_execute_kept(count_plan, values, nulls, false, 0, SPI_OK_UPDATE);
		if (SPI_processed == 0)
			dlq_execute_kept(count_insert_plan, values, nulls, false, 0, SPI_OK_INSERT);
	}
	npending_counts = 0;
	SPI_finish();
	SetUserIdAndSecContext(caller, caller_sec_context);
	PopActiveSnapshot();
}

static void
counts_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			if (npending_counts > 0)
				counts_flush();
			counts_flushed_at_commit = true;
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PARALLEL_ABORT:
			npending_counts = 0;
			counts_flushed_at_commit = false;
			break;
		default:
			break;
	}
}

static void
counts_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	int			n = 0;

	if (npending_counts == 0)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		/* Forget what the aborted subtransaction (and its children) did. */
		for (int i = 0; i < npending_counts; i++)
			if (pending_counts[i].level < level)
				pending_counts[n++] = pending_counts[i];
		npending_counts = n;
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		/* Hand it to the parent. */
		for (int i = 0; i < npending_counts; i++)
		{
			CountDelta *d = &pending_counts[i];

			if (d->level >= level)
			{
				CountDelta	moved = *d;
				CountDelta *into;

				/* counts_entry may grow the array: take the entry out first. */
				pending_counts[i] = pending_counts[--npending_counts];
				i--;
				into = counts_entry(moved.queue, strlen(moved.queue), moved.status,
									moved.slot, level - 1);
				counts_merge(into, &moved);
			}
		}
	}
}

/*
 * Register the callbacks that write this transaction's counts, once per
 * process, when the library is loaded.
 *
 * Not at the first change to dlq.messages: that change can itself be made
 * by another pre-commit callback (dlq_capture stores the rows a hand-made
 * trigger diverted there), and a callback registered while the pre-commit
 * callbacks are being called is not called in that round, so the counts of
 * a backend's first such commit were dropped at commit (issue 11, finding
 * 8).  Registered up front, the counts callback runs at every pre-commit:
 * before or after dlq_capture's, either way every change is written
 * (see counts_flushed_at_commit).  It costs nothing in a transaction that
 * changed no message.
 */
void
dlq_counts_init(void)
{
	static bool registered = false;

	if (registered)
		return;
	RegisterXactCallback(counts_xact_callback, NULL);
	RegisterSubXactCallback(counts_subxact_callback, NULL);
	registered = true;
}

PG_FUNCTION_INFO_V1(dlq_count_messages);

/*
 * Statement trigger on dlq.messages (AFTER INSERT, UPDATE, DELETE with
 * transition tables, and TRUNCATE): adds the net change per (queue, state)
 * and the newest last_failed_at seen to this transaction's counts, written
 * to dlq.counts at commit.  An update that changes neither state nor
 * last_failed_at (a claim, a configure) writes nothing.
 */
Datum
dlq_count_messages(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	TupleDesc	desc;
	int			level = GetCurrentTransactionNestLevel();

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_STATEMENT(trigdata->tg_event))
		elog(ERROR, "dlq.count_messages() must be an AFTER ... FOR EACH STATEMENT trigger");

	if (TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
	{
		/*
		 * Every message counted so far is gone, in this transaction too; the
		 * totals stay (a TRUNCATE is a purge, not a discard).
		 */
		for (int i = 0; i < npending_counts; i++)
		{
			pending_counts[i].n = 0;
			pending_counts[i].has_new_last = pending_counts[i].has_old_last = false;
		}
		SPI_connect();
		if (!counts_have_totals(RelationGetNamespace(trigdata->tg_relation)))
		{
			if (truncate_plan == NULL)
				truncate_plan = dlq_prepare_kept("DELETE FROM dlq.counts", 0, NULL);
			dlq_execute_kept(truncate_plan, NULL, NULL, false, 0, SPI_OK_DELETE);
		}
		else
		{
			if (truncate_keep_plan == NULL)
				truncate_keep_plan = dlq_prepare_kept(
													  "WITH gone AS (DELETE FROM dlq.counts c"
													  " WHERE c.shard OPERATOR(pg_catalog.<) 0"
													  " OR (c.stored_total, c.replayed_total, c.replay_failed_total,"
													  "  c.resolved_total, c.discarded_total, c.expired_total)"
													  "  OPERATOR(pg_catalog.=) (0, 0, 0, 0, 0, 0)"
													  " RETURNING c.queue, c.status, c.shard)"
													  " UPDATE dlq.counts c SET n = 0, last_failed_at = NULL"
													  " WHERE NOT EXISTS (SELECT FROM gone g"
													  "  WHERE g.queue OPERATOR(pg_catalog.=) c.queue"
													  "  AND g.status OPERATOR(pg_catalog.=) c.status"
													  "  AND g.shard OPERATOR(pg_catalog.=) c.shard)",
													  0, NULL);
			dlq_execute_kept(truncate_keep_plan, NULL, NULL, false, 0, SPI_OK_UPDATE);
		}
		SPI_finish();
		return PointerGetDatum(NULL);
	}

	desc = RelationGetDescr(trigdata->tg_relation);
	pending_status_type = TupleDescAttr(desc, SPI_fnumber(desc, "status") - 1)->atttypid;
	counts_states(pending_status_type);
	if (trigdata->tg_oldtable && trigdata->tg_newtable)
		counts_update(trigdata->tg_oldtable, trigdata->tg_newtable, desc, level);
	else if (trigdata->tg_oldtable)
		counts_rows(trigdata->tg_oldtable, desc, -1, level);
	else if (trigdata->tg_newtable)
		counts_rows(trigdata->tg_newtable, desc, 1, level);
	if (counts_flushed_at_commit && npending_counts > 0)
		counts_flush();
	return PointerGetDatum(NULL);
}
