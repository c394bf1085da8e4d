/*-------------------------------------------------------------------------
 *
 * consumer.c
 *	  The consumer side of replay: dlq_listen, dlq_claim, dlq_ack and
 *	  dlq_nack.
 *
 *	  A consumer registers with dlq_listen: it LISTENs on the queue's
 *	  channel and takes a session-level shared lock on a key derived from
 *	  the queue name.  That lock is the live-consumer registry: dlq_reprocess
 *	  looks for a holder in the lock table before it hands messages to
 *	  consumers, and the lock vanishes with the backend, however the backend
 *	  ends.  It is an advisory lock tag that no SQL function can produce (see
 *	  consumer_lock_tag), so only a caller of dlq_listen, which is granted to
 *	  dlq_operator alone, can hold it: no other role can fake a consumer with
 *	  pg_advisory_lock_shared, nor keep one from registering with
 *	  pg_advisory_lock (1.0 used a key those functions reach).
 *
 *	  Messages handed to consumers are "replaying".  dlq_claim leases a batch
 *	  of them (claimed_by, claim_expires_at) with FOR UPDATE SKIP LOCKED, so
 *	  concurrent consumers get disjoint sets and a lease that expires makes
 *	  the message claimable again (at-least-once).  dlq_ack resolves,
 *	  dlq_nack ends the attempt: back to pending, or review once the
 *	  message has used max_attempts replays.  Neither claims nor nacks count
 *	  as attempts; the replay that handed the message out did.  A nack's
 *	  "nacked" event records the attempt it ends, with the consumer's
 *	  SQLSTATE and error, for dlq_history (history.h).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/resowner.h"
#include "utils/tuplestore.h"

#include "dlq.h"
#include "history.h"
#include "version.h"

/* First key of the live-consumer advisory locks: "DLQ". */
#define DLQ_CONSUMER_LOCK_KEY1	0x00444C51

/*
 * Fourth field of the live-consumer lock tag.  The SQL advisory lock
 * functions only ever make tags with 1 (one bigint key) or 2 (two integer
 * keys); 1.0 used 2, which any role could take.
 */
#define DLQ_CONSUMER_LOCK_FIELD4	3

#define DLQ_MAX_CLAIM_BATCH 1000

/*
 * How often dlq_nack looks again for the open message that took its
 * message's dedup_key.  Each try follows a commit of such a message, so one
 * more is nearly always enough; the bound only keeps a pathological
 * schedule from spinning.
 */
#define DLQ_NACK_MAX_TRIES 100

static SPIPlanPtr channel_plan = NULL;
static SPIPlanPtr alive_plan = NULL;
static SPIPlanPtr claim_plan = NULL;
static bool claim_plan_current = false;
static SPIPlanPtr ack_plan = NULL;
static SPIPlanPtr nack_lock_plan = NULL;
static SPIPlanPtr nack_plan = NULL;
static SPIPlanPtr nack_fold_plan = NULL;

/*
 * Registrations taken in the current transaction.  LISTEN is transactional
 * but a session lock is not: when the (sub)transaction that called
 * dlq_listen aborts, its LISTEN is undone, so its registration must go too.
 */
typedef struct ConsumerRegistration
{
	uint32		key2;
	SubTransactionId subid;
} ConsumerRegistration;

static ConsumerRegistration *registrations = NULL;
static int	nregistrations = 0;
static int	maxregistrations = 0;
static bool callbacks_registered = false;

static uint32
consumer_lock_key2(const char *queue)
{
	return hash_bytes((const unsigned char *) queue, strlen(queue));
}

static void
consumer_lock_tag(LOCKTAG *tag, uint32 key2)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, DLQ_CONSUMER_LOCK_KEY1, key2,
						 DLQ_CONSUMER_LOCK_FIELD4);
}

/* Drop the registrations of subtransaction subid (or of all, if invalid). */
static void
consumer_unregister(SubTransactionId subid)
{
	int			kept = 0;

	for (int i = 0; i < nregistrations; i++)
	{
		if (subid == InvalidSubTransactionId || registrations[i].subid == subid)
		{
			LOCKTAG		tag;

			consumer_lock_tag(&tag, registrations[i].key2);
			(void) LockRelease(&tag, ShareLock, true);
		}
		else
			registrations[kept++] = registrations[i];
	}
	nregistrations = kept;
}

static void
consumer_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			consumer_unregister(InvalidSubTransactionId);
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PREPARE:
			nregistrations = 0;
			break;
		default:
			break;
	}
}

static void
consumer_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						  SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		consumer_unregister(mySubid);
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		for (int i = 0; i < nregistrations; i++)
			if (registrations[i].subid == mySubid)
				registrations[i].subid = parentSubid;
	}
}

/* Take the session lock that registers this backend as a consumer. */
static void
consumer_register(const char *queue)
{
	LOCKTAG		tag;
	uint32		key2 = consumer_lock_key2(queue);

	consumer_lock_tag(&tag, key2);
	if (LockHeldByMe(&tag, ShareLock))
		return;

	if (!callbacks_registered)
	{
		RegisterXactCallback(consumer_xact_callback, NULL);
		RegisterSubXactCallback(consumer_subxact_callback, NULL);
		callbacks_registered = true;
	}
	if (nregistrations >= maxregistrations)
	{
		int			newmax = Max(8, maxregistrations * 2);

		registrations = registrations == NULL ?
			MemoryContextAlloc(TopMemoryContext, sizeof(ConsumerRegistration) * newmax) :
			repalloc(registrations, sizeof(ConsumerRegistration) * newmax);
		maxregistrations = newmax;
	}

	/*
	 * A session lock survives transaction end and is released when the
	 * backend exits, crash or not.  Consumers only ever take it shared and
	 * nothing else can take it at all, so it is always free; it is still
	 * taken without waiting, so that dlq_listen can never hang on it.
	 */
	if (LockAcquire(&tag, ShareLock, true, true) == LOCKACQUIRE_NOT_AVAIL)
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("could not register as a consumer of queue \"%s\"", queue),
				 errdetail("Another session holds the consumer lock of the queue in a conflicting mode.")));
	registrations[nregistrations].key2 = key2;
	registrations[nregistrations].subid = GetCurrentSubTransactionId();
	nregistrations++;
}

/*
 * Whether some backend of this database has called dlq_listen(queue) and
 * is still alive.  Must be called inside SPI.
 */
bool
dlq_consumer_alive(const char *queue)
{
	Datum		values[4];
	bool		isnull;

	if (alive_plan == NULL)
	{
		Oid			types[4] = {OIDOID, OIDOID, OIDOID, INT2OID};

		alive_plan = dlq_prepare_kept(
									  "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l"
									  " WHERE l.locktype = 'advisory' AND l.database = $1"
									  " AND l.classid = $2 AND l.objid = $3 AND l.objsubid = $4"
									  " AND l.granted)",
									  4, types);
	}
	values[0] = ObjectIdGetDatum(MyDatabaseId);
	values[1] = ObjectIdGetDatum((Oid) DLQ_CONSUMER_LOCK_KEY1);
	values[2] = ObjectIdGetDatum((Oid) consumer_lock_key2(queue));
	values[3] = Int16GetDatum(DLQ_CONSUMER_LOCK_FIELD4);
	if (dlq_execute_kept(alive_plan, values, NULL, true, 1, SPI_OK_SELECT) != 1)
		elog(ERROR, "could not look for consumers");
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
									  SPI_tuptable->tupdesc, 1, &isnull));
}

PG_FUNCTION_INFO_V1(dlq_listen);

/*
 * dlq_listen(queue) returns text
 *
 * LISTEN on the queue's channel and register as a live consumer until the
 * session ends.  The queue is created with defaults if it is new, so that
 * consumers may start before the first failure.  Returns the channel.
 */
Datum
dlq_listen(PG_FUNCTION_ARGS)
{
	char	   *queue = dlq_check_name("queue name",
									   PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0), false);
	DlqOwnerContext owner;
	Datum		value = CStringGetTextDatum(queue);
	char	   *channel;
	bool		isnull;

	dlq_become_owner(&owner);
	SPI_connect();
	if (channel_plan == NULL)
	{
		Oid			types[1] = {TEXTOID};

		channel_plan = dlq_prepare_kept("SELECT channel FROM dlq.queues WHERE queue = $1",
										1, types);
	}
	dlq_ensure_queue(queue, owner.caller);
	if (dlq_execute_kept(channel_plan, &value, NULL, false, 1, SPI_OK_SELECT) != 1)
		elog(ERROR, "could not read the channel of queue \"%s\"", queue);
	channel = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0],
												SPI_tuptable->tupdesc, 1, &isnull));
	channel = MemoryContextStrdup(TopTransactionContext, channel);
	SPI_finish();
	dlq_restore_caller(&owner);

	Async_Listen(channel);
	consumer_register(queue);

	PG_RETURN_TEXT_P(cstring_to_text(channel));
}

/*
 * Put the rows of the last SPI result, whose first column is message_id,
 * into tupstore in message_id order.
 */
static void
consumer_put_sorted(Tuplestorestate *tupstore)
{
	uint64		n = SPI_processed;
	HeapTuple  *rows = SPI_tuptable->vals;
	int64	   *ids = palloc(sizeof(int64) * n);
	bool		isnull;

	for (uint64 i = 0; i < n; i++)
		ids[i] = DatumGetInt64(SPI_getbinval(rows[i], SPI_tuptable->tupdesc, 1, &isnull));
	for (uint64 i = 1; i < n; i++)
	{
		for (uint64 j = i; j > 0 && ids[j - 1] > ids[j]; j--)
		{
			int64		t = ids[j];
			HeapTuple	r = rows[j];

			ids[j] = ids[j - 1];
			rows[j] = rows[j - 1];
			ids[j - 1] = t;
			rows[j - 1] = r;
		}
	}
	for (uint64 i = 0; i < n; i++)
		tuplestore_puttuple(tupstore, rows[i]);
}

PG_FUNCTION_INFO_V1(dlq_claim);

/*
 * dlq_claim(queue, batch_size, visibility) returns setof dlq.message
 *
 * Lease up to batch_size replaying messages of the queue that nobody holds
 * (never claimed, or whose lease expired) for the visibility interval.
 */
Datum
dlq_claim(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *queue;
	int32		batch_size;
	Interval   *visibility;
	Datum		values[4];
	Tuplestorestate *tupstore;
	TupleDesc	tupdesc;
	DlqOwnerContext owner;

	queue = dlq_check_name("queue name", PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0), false);
	dlq_check_not_null(fcinfo, 1, "batch_size");
	batch_size = PG_GETARG_INT32(1);
	if (batch_size < 1 || batch_size > DLQ_MAX_CLAIM_BATCH)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("batch_size must be between 1 and %d", DLQ_MAX_CLAIM_BATCH)));
	dlq_check_not_null(fcinfo, 2, "visibility");
	visibility = dlq_check_interval(fcinfo, 2, "visibility", false, DLQ_MAX_DELAY_YEARS);

	InitMaterializedSRF(fcinfo, 0);
	tupstore = rsinfo->setResult;
	tupdesc = rsinfo->setDesc;

	dlq_become_owner(&owner);
	SPI_connect();
	/*
	 * It returns dlq.message, whose columns grew in 1.1: a session that
	 * prepared for 1.0 prepares again once the schema is updated.
	 */
	if (claim_plan != NULL && claim_plan_current != dlq_schema_current())
	{
		SPI_freeplan(claim_plan);
		claim_plan = NULL;
	}
	if (claim_plan == NULL)
	{
		Oid			types[4] = {TEXTOID, INT4OID, TEXTOID, INTERVALOID};

		claim_plan_current = dlq_schema_current();
		claim_plan = dlq_prepare_kept(dlq_schema_sql(
									  "WITH c AS (SELECT message_id FROM dlq.messages"
									  "  WHERE [[slot = 0 AND ]]queue = $1 AND status = 'replaying'"
									  "  AND (claim_expires_at IS NULL OR claim_expires_at <= now())"
									  "  ORDER BY message_id LIMIT $2 FOR UPDATE SKIP LOCKED)"
									  " UPDATE dlq.messages m SET claimed_by = $3,"
									  "  claim_expires_at = now() + $4"
									  " FROM c WHERE [[m.slot = 0 AND ]]m.message_id = c.message_id"
									  " RETURNING " DLQ_MESSAGE_COLUMNS),
									  4, types);
	}
	values[0] = CStringGetTextDatum(queue);
	values[1] = Int32GetDatum(batch_size);
	values[2] = CStringGetTextDatum(psprintf("%s/%d",
											 GetUserNameFromId(owner.caller, false),
											 MyProcPid));
	values[3] = IntervalPGetDatum(visibility);
	dlq_execute_kept_moved(claim_plan, values, NULL, 0, SPI_OK_UPDATE_RETURNING);
	if (SPI_tuptable->tupdesc->natts != tupdesc->natts)
		elog(ERROR, "dlq.message does not match dlq.messages");

	/* RETURNING comes back in no particular order: hand them out by id. */
	if (SPI_processed > 0)
		consumer_put_sorted(tupstore);
	else
		dlq_check_queue_exists(queue);
	SPI_finish();
	dlq_restore_caller(&owner);

	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(dlq_ack);

/*
 * dlq_ack(message_ids) returns bigint
 *
 * Resolve replaying messages; returns how many were.  Ids that are not
 * replaying (already acked, timed out back to pending, unknown) are left
 * alone and not counted.
 */
Datum
dlq_ack(PG_FUNCTION_ARGS)
{
	int			nids;
	int64	   *ids;
	DlqOwnerContext owner;
	int64		acked = 0;
	Datum		request_id = dlq_new_request_id();

	ids = dlq_check_id_array(PG_ARGISNULL(0) ? NULL : PG_GETARG_ARRAYTYPE_P(0), &nids);

	dlq_become_owner(&owner);
	SPI_connect();
	/*
	 * status is compared as text so that the statement is always driven by
	 * the primary key on the ids: statistics taken while few messages were
	 * replaying would otherwise pick the status index and scan every
	 * replaying message for each batch.
	 */
	if (ack_plan == NULL)
	{
		Oid			types[1] = {INT8ARRAYOID};

		ack_plan = dlq_prepare_kept(dlq_schema_sql(
									"WITH a AS (UPDATE dlq.messages SET status = 'resolved',"
									"  resolved_at = now(), claimed_by = NULL, claim_expires_at = NULL,"
									"  next_retry_at = NULL" DLQ_SET_CLOSING_SLOT
									"  WHERE message_id = ANY ($1)[[ AND slot = 0]]"
									"  AND status::text = 'replaying'"
									"  RETURNING queue, message_id)"
									" SELECT queue, count(*), array_agg(message_id ORDER BY message_id)"
									" FROM a GROUP BY queue ORDER BY queue"),
									1, types);
	}
	for (int off = 0; off < nids; off += DLQ_BATCH_IDS)
	{
		int			n = Min(DLQ_BATCH_IDS, nids - off);
		Datum		arg = dlq_id_array_datum(ids + off, n);

		dlq_execute_kept_moved(ack_plan, &arg, NULL, 0, SPI_OK_SELECT);
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	row = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			char	   *queue = TextDatumGetCString(SPI_getbinval(row, desc, 1, &isnull));
			int64		count = DatumGetInt64(SPI_getbinval(row, desc, 2, &isnull));
			int			nq;
			int64	   *qids = NULL;

			if (count <= DLQ_AUDIT_MAX_IDS)
				qids = dlq_id_array_values(DatumGetArrayTypeP(SPI_getbinval(row, desc, 3, &isnull)),
										   &nq);
			else
				nq = 0;
			dlq_audit("acked", GetUserNameFromId(owner.caller, false), queue,
					  request_id, true, count, qids, nq, NULL);
			acked += count;
		}
	}
	SPI_finish();
	dlq_restore_caller(&owner);

	PG_RETURN_INT64(acked);
}

/*
 * Run nack_plan: the message goes back to pending (or review).  For a
 * message with a dedup_key that runs in a subtransaction, and returns false
 * with nothing changed when the unique index over open messages refuses it:
 * another message with the key became open after nack_lock_plan looked, so
 * the caller must fold into that one.  Any other error is raised.
 */
static bool
consumer_nack_reopen(Datum *values, const char *nulls, bool has_dedup_key, char **status)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool reopened = false;
	bool		isnull;

	if (!has_dedup_key)
	{
		if (dlq_execute_kept(nack_plan, values, nulls, false, 0, SPI_OK_UPDATE_RETURNING) != 1)
			elog(ERROR, "could not nack message %lld",
				 (long long) DatumGetInt64(values[0]));
		*status = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0],
													SPI_tuptable->tupdesc, 1, &isnull));
		return true;
	}

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		if (dlq_execute_kept(nack_plan, values, nulls, false, 0, SPI_OK_UPDATE_RETURNING) != 1)
			elog(ERROR, "could not nack message %lld",
				 (long long) DatumGetInt64(values[0]));
		MemoryContextSwitchTo(cxt);
		*status = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0],
													SPI_tuptable->tupdesc, 1, &isnull));
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		reopened = true;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode != ERRCODE_UNIQUE_VIOLATION ||
			edata->constraint_name == NULL ||
			(strcmp(edata->constraint_name, DLQ_DEDUP_INDEX) != 0 &&
			 strcmp(edata->constraint_name, DLQ_DEDUP_INDEX_1_0) != 0))
			PG_RE_THROW();
		FlushErrorState();
		FreeErrorData(edata);
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_END_TRY();
	return reopened;
}

/* The three plans of dlq_nack, prepared together. */
static void
consumer_nack_prepare(void)
{
	Oid			ltypes[1] = {INT8OID};
	Oid			types[6] = {INT8OID, TEXTOID, TEXTOID, TEXTOID, INTERVALOID, INT8OID};

	if (nack_plan != NULL)
		return;
	nack_lock_plan = dlq_prepare_kept(
									  "SELECT m.status::text, m.queue, m.dedup_key,"
									  "  (SELECT o.message_id FROM dlq.messages o"
									  "   WHERE o.queue = m.queue AND o.dedup_key = m.dedup_key"
									  "   AND o.status IN ('pending', 'review') AND o.message_id <> m.message_id"
									  "   FOR UPDATE),"
									  "  m.attempts"
									  " FROM dlq.messages m WHERE m.message_id = $1 FOR UPDATE OF m",
									  1, ltypes);
	/* error_class by the queue's own classes where the schema has them (1.1) */
	nack_plan = dlq_prepare_kept(dlq_schema_sql(
								 "UPDATE dlq.messages m SET"
								 "  status = CASE WHEN m.attempts >= m.max_attempts"
								 "   THEN 'review' ELSE 'pending' END::dlq.status,"
								 "  error = $2, sqlstate = $3, error_class = coalesce("
								 "[[dlq.sqlstate_class($3::text, q.transient_sqlstates, q.permanent_sqlstates), ]]$4),"
								 "  error_detail = NULL, last_failed_at = now(),"
								 "  claimed_by = NULL, claim_expires_at = NULL,"
								 "  next_retry_at = CASE WHEN m.attempts >= m.max_attempts THEN NULL"
								 "   WHEN $5 IS NOT NULL THEN now() + $5"
								 "   WHEN q.auto_retry THEN now() + dlq.retry_delay(q, m.attempts + 1)"
								 "   END"
								 " FROM dlq.queues q WHERE q.queue = m.queue AND m.message_id = $1"
								 " RETURNING m.status::text"),
								 6, types);
	nack_fold_plan = dlq_prepare_kept(dlq_schema_sql(
									  "WITH r AS (UPDATE dlq.messages SET status = 'resolved',"
									  "  resolved_at = now(), claimed_by = NULL, claim_expires_at = NULL,"
									  "  error = $2, sqlstate = $3, error_class = $4, last_failed_at = now()"
									  DLQ_SET_CLOSING_SLOT
									  "  WHERE message_id = $1[[ AND slot = 0]] RETURNING occurrences)"
									  " UPDATE dlq.messages o SET occurrences = o.occurrences + r.occurrences,"
									  "  error = $2, sqlstate = $3, error_class = $4, error_detail = NULL,"
									  "  last_failed_at = now()"
									  " FROM r WHERE o.message_id = $6[[ AND o.slot = 0]]"),
									  6, types);
}

/* The message dlq_nack works on, locked with what holds its dedup_key. */
typedef struct ConsumerNackTarget
{
	char	   *queue;
	bool		has_dedup_key;
	int64		into;			/* open message holding the key, or 0 */
	int32		attempt;		/* the attempt the nack ends */
} ConsumerNackTarget;

/*
 * Lock message id and the open message holding its dedup_key, if any
 * (nack_lock_plan).  Raises 02000 for an unknown message and 55000 for one
 * that is not being replayed.
 */
static void
consumer_nack_lock(Datum *values, int64 id, ConsumerNackTarget *target)
{
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;
	char	   *status;
	Datum		d;

	dlq_execute_kept_moved(nack_lock_plan, values, NULL, 1, SPI_OK_SELECT);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA),
				 errmsg("message %lld does not exist", (long long) id)));
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	status = TextDatumGetCString(SPI_getbinval(row, desc, 1, &isnull));
	target->queue = TextDatumGetCString(SPI_getbinval(row, desc, 2, &isnull));
	(void) SPI_getbinval(row, desc, 3, &isnull);
	target->has_dedup_key = !isnull;
	d = SPI_getbinval(row, desc, 4, &isnull);
	target->into = isnull ? 0 : DatumGetInt64(d);
	target->attempt = DatumGetInt32(SPI_getbinval(row, desc, 5, &isnull));
	if (strcmp(status, "replaying") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("message %lld is not being replayed", (long long) id),
				 errdetail("Its status is \"%s\".", status)));
}

/*
 * Fold message id into the open message holding its dedup_key: add its
 * occurrences there and resolve it, with a "nacked" event that records the
 * failed attempt (history.h) and a "merged" one.
 */
static void
consumer_nack_fold(Datum *values, const char *nulls, int64 id, const char *error,
				   const char *sqlstate, const ConsumerNackTarget *target,
				   const char *actor, Datum request_id)
{
	char	   *members;

	if (dlq_execute_kept(nack_fold_plan, values, nulls, false, 0, SPI_OK_UPDATE) != 1)
		elog(ERROR, "could not fold message %lld into message %lld",
			 (long long) id, (long long) target->into);
	members = psprintf("\"into\": %lld, \"error\": %s",
					   (long long) target->into, dlq_json_quote(error));
	dlq_audit("nacked", actor, target->queue, request_id, true, 1, &id, 1,
			  dlq_jsonb(psprintf("{%s, \"attempts\": [%s]}", members,
								 dlq_attempt_json(id, target->attempt, sqlstate, error))));
	dlq_audit("merged", actor, target->queue, request_id, true, 1, &id, 1,
			  dlq_jsonb(psprintf("{%s}", members)));
}

/* The error argument of dlq_nack: not NULL, not empty, not too large. */
static char *
consumer_nack_error_arg(FunctionCallInfo fcinfo)
{
	char	   *error;

	dlq_check_not_null(fcinfo, 1, "error");
	error = text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (error[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("error must not be empty")));
	dlq_check_payload_size("error text", strlen(error));
	return error;
}

/*
 * The nack itself, as the owner inside SPI: lock, then fold or reopen,
 * looking again when a concurrent commit took the dedup_key in between.
 * values: the parameters of the nack plans ($6 is set here).  Returns the
 * new status.
 */
static char *
consumer_nack_run(Datum *values, const char *nulls, int64 id, const char *error,
				  const char *sqlstate, const char *actor)
{
	Datum		request_id = dlq_new_request_id();
	ConsumerNackTarget target;
	char	   *status;
	Jsonb	   *detail;

	for (int tries = 1;; tries++)
	{
		/* Lock the message and the open message holding its dedup_key. */
		consumer_nack_lock(values, id, &target);
		values[5] = Int64GetDatum(target.into);

		if (target.has_dedup_key && target.into != 0)
		{
			consumer_nack_fold(values, nulls, id, error, sqlstate, &target, actor,
							   request_id);
			return "resolved";
		}
		if (consumer_nack_reopen(values, nulls, target.has_dedup_key, &status))
			break;

		/*
		 * Another message with the key became open after the lock plan
		 * looked (a dlq_store, a nack or the worker's recovery committed in
		 * between): look again and fold into it.  A transaction snapshot
		 * would never see it.
		 */
		if (IsolationUsesXactSnapshot() || tries >= DLQ_NACK_MAX_TRIES)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not serialize access due to a concurrent store of the same dedup_key"),
					 errdetail("Message %lld could not go back to pending: another open message of queue \"%s\" took its dedup_key.",
							   (long long) id, target.queue),
					 errhint("Retry the transaction; the nack will then fold the message into that one.")));
	}
	detail = dlq_jsonb(psprintf("{\"status\": \"%s\", \"error\": %s, \"attempts\": [%s]}",
								status, dlq_json_quote(error),
								dlq_attempt_json(id, target.attempt, sqlstate, error)));
	dlq_audit("nacked", actor, target.queue, request_id, true, 1, &id, 1, detail);
	return status;
}

PG_FUNCTION_INFO_V1(dlq_nack);

/*
 * dlq_nack(message_id, error, sqlstate, retry_in) returns text
 *
 * End the replay of one message with a failure: the error is recorded and
 * the message goes back to pending, or to review when it has used its
 * max_attempts replays.  retry_in sets next_retry_at; without it auto_retry
 * queues back off with dlq.retry_delay.  A message whose dedup_key is
 * meanwhile held by another open message is folded into that one (its
 * occurrences added) and resolved, with a "merged" event, also when that
 * message is committed by a concurrent dlq_store, nack or recovery while
 * this nack runs (the reopening then fails on the unique index, is undone,
 * and the nack looks again).  Returns the new status.
 */
Datum
dlq_nack(PG_FUNCTION_ARGS)
{
	int64		id;
	char	   *error;
	const char *sqlstate;
	Interval   *retry_in;
	DlqOwnerContext owner;
	Datum		values[6];
	char		nulls[6];
	char	   *status;

	dlq_check_not_null(fcinfo, 0, "message_id");
	id = PG_GETARG_INT64(0);
	error = consumer_nack_error_arg(fcinfo);
	sqlstate = dlq_check_sqlstate(PG_ARGISNULL(2) ? NULL : PG_GETARG_TEXT_PP(2));
	retry_in = dlq_check_interval(fcinfo, 3, "retry_in", true, DLQ_MAX_DELAY_YEARS);

	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int64GetDatum(id);
	values[1] = CStringGetTextDatum(error);
	if (sqlstate)
		values[2] = CStringGetTextDatum(sqlstate);
	else
		nulls[2] = 'n';
	values[3] = CStringGetTextDatum(dlq_error_class(sqlstate));
	if (retry_in)
		values[4] = IntervalPGetDatum(retry_in);
	else
		nulls[4] = 'n';

	dlq_become_owner(&owner);
	SPI_connect();
	consumer_nack_prepare();
	status = consumer_nack_run(values, nulls, id, error, sqlstate,
							   GetUserNameFromId(owner.caller, false));
	status = MemoryContextStrdup(TopTransactionContext, status);
	SPI_finish();
	dlq_restore_caller(&owner);

	PG_RETURN_TEXT_P(cstring_to_text(status));
}
