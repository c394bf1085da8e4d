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
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
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

#include "dlq.h"


static SPIPlanPtr count_plan = NULL;
static SPIPlanPtr count_insert_plan = NULL;
static Oid	count_plan_status_type = InvalidOid;
static SPIPlanPtr truncate_plan = NULL;

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
} CountDelta;

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

/*
 * Add the rows of one transition table to this transaction's counts: sign
 * +1 for new rows, -1 for old ones.
 */
static void
counts_rows(Tuplestorestate *rows, TupleDesc desc, int sign, int level)
{
	TupleTableSlot *tts = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	int			queue_att = SPI_fnumber(desc, "queue");
	int			status_att = SPI_fnumber(desc, "status");
	int			failed_att = SPI_fnumber(desc, "last_failed_at");
	int			slot_att = SPI_fnumber(desc, "slot");	/* none in 1.0 */
	int			last = -1;

	if (queue_att <= 0 || status_att <= 0 || failed_att <= 0)
		elog(ERROR, "dlq.messages lacks queue, status or last_failed_at");

	tuplestore_rescan(rows);
	while (tuplestore_gettupleslot(rows, true, false, tts))
	{
		bool		isnull;
		text	   *queue = DatumGetTextPP(slot_getattr(tts, queue_att, &isnull));
		Oid			status = DatumGetObjectId(slot_getattr(tts, status_att, &isnull));
		Datum		failed = slot_getattr(tts, failed_att, &isnull);
		TimestampTz ts = isnull ? DT_NOBEGIN : DatumGetTimestampTz(failed);
		int			slot = slot_att > 0 ? DatumGetInt32(slot_getattr(tts, slot_att, &isnull)) : 0;
		int			len = VARSIZE_ANY_EXHDR(queue);
		CountDelta *d;

		/* Bulk statements mostly touch one queue and state: try the last. */
		d = last >= 0 ? &pending_counts[last] : NULL;
		if (d == NULL || d->status != status || d->slot != slot ||
			strncmp(d->queue, VARDATA_ANY(queue), len) != 0 || d->queue[len] != '\0')
		{
			d = counts_entry(VARDATA_ANY(queue), len, status, slot, level);
			last = d - pending_counts;
		}
		d->n += sign;
		if (sign > 0 && (!d->has_new_last || ts > d->new_last))
		{
			d->has_new_last = true;
			d->new_last = ts;
		}
		if (sign < 0 && (!d->has_old_last || ts > d->old_last))
		{
			d->has_old_last = true;
			d->old_last = ts;
		}
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
 * The plans that write dlq.counts, prepared again when dlq.status was
 * recreated (its OID is a parameter type).
 */
static void
counts_prepare(void)
{
	Oid			types[5] = {TEXTOID, pending_status_type, INT2OID, INT8OID, TIMESTAMPTZOID};

	if (count_plan != NULL && count_plan_status_type == pending_status_type)
		return;
	if (count_plan != NULL)
	{
		SPI_freeplan(count_plan);
		SPI_freeplan(count_insert_plan);
	}
	count_plan = count_insert_plan = NULL;
	/* The shard's row exists but for a writer's first change: update it. */
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
	count_plan_status_type = pending_status_type;
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

	/* The extension was dropped in this transaction: nothing to count. */
	if (!OidIsValid(relid) ||
		!HeapTupleIsValid(tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid))))
	{
		npending_counts = 0;
		return;
	}
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);

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
	counts_prepare();

	for (int i = 0; i < npending_counts; i++)
	{
		CountDelta *d = &pending_counts[i];
		bool		newer = d->has_new_last &&
			(!d->has_old_last || d->new_last > d->old_last);
		Datum		values[5];
		char		nulls[5] = {' ', ' ', ' ', ' ', ' '};

		if (d->n == 0 && !newer)
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
		/* Everything counted so far is gone, in this transaction too. */
		npending_counts = 0;
		SPI_connect();
		if (truncate_plan == NULL)
			truncate_plan = dlq_prepare_kept("DELETE FROM dlq.counts", 0, NULL);
		dlq_execute_kept(truncate_plan, NULL, NULL, false, 0, SPI_OK_DELETE);
		SPI_finish();
		return PointerGetDatum(NULL);
	}

	desc = RelationGetDescr(trigdata->tg_relation);
	pending_status_type = TupleDescAttr(desc, SPI_fnumber(desc, "status") - 1)->atttypid;
	if (trigdata->tg_oldtable)
		counts_rows(trigdata->tg_oldtable, desc, -1, level);
	if (trigdata->tg_newtable)
		counts_rows(trigdata->tg_newtable, desc, 1, level);
	if (counts_flushed_at_commit && npending_counts > 0)
		counts_flush();
	return PointerGetDatum(NULL);
}
