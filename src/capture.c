/*-------------------------------------------------------------------------
 *
 * capture.c
 *	  The dlq_capture trigger and the isolate-mode intake trigger: diverting
 *	  rows that fail their table's constraints into the DLQ, buffered and
 *	  stored many at a time.
 *
 *	  dlq_capture is a BEFORE INSERT OR UPDATE ... FOR EACH ROW trigger.  It
 *	  predicts, without a subtransaction, whether the row would violate a
 *	  NOT NULL, CHECK, UNIQUE / PRIMARY KEY or FOREIGN KEY constraint of the
 *	  table, the same way the executor would check it (capture_predict.c).
 *	  A violating row is kept with the SQLSTATE, message and detail that
 *	  PostgreSQL itself would have raised, and skipped (the trigger returns
 *	  NULL), so the load goes on.  Kept rows are stored in batches: per
 *	  CAPTURE_BATCH rows, at the end of the statement (the AFTER STATEMENT
 *	  trigger dlq_attach adds calls dlq_capture too) and before commit.
 *
 *	  What a diverted row records cannot be chosen by whoever fired or made
 *	  the trigger: its source_relation is the table the trigger was made on
 *	  (for a clone on a partition, the table of the trigger it was cloned
 *	  from), a row that row-level security binds is never diverted (the
 *	  policy is checked after BEFORE triggers), and the trigger refuses
 *	  dlq's own tables and the catalogs, whose rows storing would capture
 *	  again.
 *
 *	  dlq_capture_isolate is the INSTEAD OF trigger of an isolate-mode
 *	  intake view: one subtransaction per row, every error caught except a
 *	  missing privilege (the inserting role may not write the table, so its
 *	  row must not get there through a replay by one that may).  Its rows go
 *	  to the table the view reads, found through the view's query, which
 *	  follows renames and survives pg_dump and pg_restore.
 *
 *	  Re-applying a stored row to its table is reapply.c's; while it
 *	  inserts, dlq_capture hands a violation back to it instead of storing
 *	  a new message.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#if PG_VERSION_NUM >= 140000
#include "commands/copyfrom_internal.h"
#endif
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"

#include "capture_int.h"
#include "dlq.h"

/* A composite datum as jsonb, through row_to_json (no type resolution needed). */
static Jsonb *
capture_row_to_jsonb(Datum composite)
{
	Datum		json = DirectFunctionCall1(row_to_json, composite);

	return dlq_jsonb(text_to_cstring(DatumGetTextPP(json)));
}

/*
 * The line of a COPY's input that holds the row rel's trigger is called
 * for, or 0.  COPY FROM keeps it in its error context callback's state
 * (PostgreSQL 14 and later; 13 keeps the state private) and inserts row by
 * row into a table with a BEFORE ROW trigger, calling the trigger straight
 * from its loop: its callback is then the top of error_context_stack.
 * Anything in between (SPI, PL/pgSQL) means the row comes from a statement
 * run inside the COPY, by another table's trigger for instance, and that
 * row has no line of its own.  The COPY must also be into rel or a table
 * rel is a partition of.
 */
static int64
capture_copy_line(Relation rel)
{
#if PG_VERSION_NUM >= 140000
	ErrorContextCallback *top = error_context_stack;
	CopyFromState cstate;
	Oid			copied;

	if (top == NULL || top->callback != CopyFromErrorCallback || top->arg == NULL)
		return 0;
	cstate = (CopyFromState) top->arg;
	if (cstate->rel == NULL)
		return 0;
	copied = RelationGetRelid(cstate->rel);
	if (copied != RelationGetRelid(rel) &&
		!(rel->rd_rel->relispartition &&
		  list_member_oid(get_partition_ancestors(RelationGetRelid(rel)), copied)))
		return 0;
	return (int64) cstate->cur_lineno;
#else
	return 0;
#endif
}

/* The metadata of a row captured from a COPY: {"copy_line": n}. */
static Jsonb *
capture_copy_metadata(int64 copy_line)
{
	return dlq_jsonb(psprintf("{\"copy_line\": " INT64_FORMAT "}", copy_line));
}

/* A row too large for a message raises the error instead of vanishing. */
static void
capture_check_size(Jsonb *payload, const char *error)
{
	if (VARSIZE(payload) > dlq_max_payload_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("captured row is too large for the DLQ"),
				 errdetail("It is %d bytes as jsonb; dlq.max_payload_bytes is %d.",
						   (int) VARSIZE(payload), dlq_max_payload_bytes),
				 errhint("The row was not inserted: %s", error)));
}

/* Store one diverted row as the extension owner. */
static void
capture_store(const char *queue, const char *component, Jsonb *payload,
			  const char *error, const char *sqlstate, Jsonb *error_detail,
			  Oid source_relation, const char *operation, int64 copy_line)
{
	DlqStoreArgs args = {0};
	DlqOwnerContext owner;

	args.queue = queue;
	args.component = component;
	args.payload = payload;
	args.error = error;
	args.sqlstate = sqlstate;
	args.error_detail = error_detail;
	args.source_relation = source_relation;
	args.operation = operation;
	args.created_by = GetUserId();
	args.metadata = copy_line > 0 ? capture_copy_metadata(copy_line) : NULL;

	capture_check_size(payload, error);

	dlq_become_owner(&owner);
	SPI_connect();
	(void) dlq_store_message(&args);
	SPI_finish();
	dlq_restore_caller(&owner);
}

/* The queue (and component) named in a trigger's arguments. */
static void
capture_trigger_args(Trigger *trigger, int first, const char **queue,
					 const char **component)
{
	int			nargs = trigger->tgnargs - first;

	if (nargs < 1 || nargs > 2)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("trigger \"%s\" must pass the queue name and optionally a component",
						trigger->tgname)));
	*queue = dlq_check_name("queue name", cstring_to_text(trigger->tgargs[first]), false);
	*component = nargs == 2 ?
		dlq_check_name("component", cstring_to_text(trigger->tgargs[first + 1]), false) :
		NULL;
}

/*
 * Diverted rows of the row trigger are buffered and stored many at a time:
 * one multi-row INSERT per CAPTURE_BATCH rows, at the end of the statement
 * (the AFTER STATEMENT trigger dlq_attach creates) and, for anything left,
 * just before commit.  Rows buffered in a subtransaction that aborts are
 * dropped with it, as their INSERT would have been.
 *
 * Each row records the subtransaction that diverted it, and the buffer is in
 * that order: a subtransaction's ids are above those of every row buffered
 * before it began.  A flush inside a subtransaction therefore stores only the
 * rows with an id at or above the current one, its own and those of the
 * subtransactions that committed into it: stored there, rows of an outer
 * level would vanish if this subtransaction aborted while their own level
 * goes on.  They stay buffered for a flush at their own level or before
 * commit, and this level's next batch is counted from them
 * (capture_flush_at), so it is still CAPTURE_BATCH rows.
 *
 * A flush runs SQL (dlq.queues, dlq.messages), and with it whatever triggers
 * those tables have; such a trigger may divert more rows and so buffer and
 * flush again while a flush is under way.  A flush therefore takes its rows
 * out of the buffer before it runs anything: rows diverted meanwhile go
 * after the rows it left, through capture_buffer_reserve, and are stored by
 * the nested flush or the next one.
 */
#define CAPTURE_BATCH 1000

/* Flushes before commit while each stores rows that divert new ones. */
#define CAPTURE_MAX_FLUSH_ROUNDS 100

typedef struct CaptureBuffered
{
	char	   *queue;
	char	   *component;
	Jsonb	   *payload;
	char	   *error;
	char		sqlstate[6];
	Jsonb	   *error_detail;
	Oid			source_relation;
	const char *operation;
	Oid			created_by;		/* the user whose statement diverted it */
	int64		copy_line;		/* its line in a COPY's input, or 0 */
	SubTransactionId subid;
} CaptureBuffered;

/* The buffer, in TopTransactionContext; capacity rows allocated. */
static CaptureBuffered *capture_buffer = NULL;
static int	capture_nbuffered = 0;
static int	capture_capacity = 0;
static int	capture_flush_at = CAPTURE_BATCH;	/* flush when this many rows */
static bool capture_callbacks_registered = false;
static SPIPlanPtr capture_batch_plan = NULL;

/* Isolate-mode INSERTs running (capture_isolate_insert); 0 at xact end. */
static int	capture_isolate_depth = 0;

/* Reject limits: a statement's budget and counts (see below). */
typedef struct CaptureLimits
{
	Oid			relid;			/* table, or intake view, of the statement */
	Oid			target;			/* the table its rows go to, for the error */
	int64		max_errors;		/* or -1: none */
	double		max_error_ratio;	/* or -1: none */
	int64		processed;		/* rows the row trigger saw */
	int64		diverted;		/* of which diverted */
	SubTransactionId subid;
} CaptureLimits;

/* The frames, innermost last, in TopTransactionContext. */
static CaptureLimits *capture_limits = NULL;
static int	capture_nlimits = 0;
static int	capture_limits_capacity = 0;

#define CAPTURE_BATCH_NARGS 10

/* Room for n more rows in the buffer. */
static void
capture_buffer_reserve(int n)
{
	int			need = capture_nbuffered + n;

	if (need <= capture_capacity)
		return;
	need = Max(need, Max(CAPTURE_BATCH, capture_capacity * 2));
	if (capture_buffer == NULL)
		capture_buffer = MemoryContextAlloc(TopTransactionContext,
											sizeof(CaptureBuffered) * need);
	else
		capture_buffer = repalloc(capture_buffer, sizeof(CaptureBuffered) * need);
	capture_capacity = need;
}

/*
 * A flush failed: put its rows back at position at, between the outer
 * levels' rows it left and those buffered since, so that a subtransaction
 * abort trims the buffer as usual (rows in order of their subtransaction)
 * and the rows of the surviving transaction stay.
 */
static void
capture_buffer_restore(int at, CaptureBuffered *rows, int n)
{
	Assert(at <= capture_nbuffered);
	capture_buffer_reserve(n);
	memmove(capture_buffer + at + n, capture_buffer + at,
			sizeof(CaptureBuffered) * (capture_nbuffered - at));
	memcpy(capture_buffer + at, rows, sizeof(CaptureBuffered) * n);
	capture_nbuffered += n;
	pfree(rows);
}

/* The buffered rows as one array per column of the batch INSERT, in values. */
static void
capture_batch_arrays(CaptureBuffered *rows, int n, Datum *values)
{
	Datum	   *cols[CAPTURE_BATCH_NARGS];
	bool	   *nulls[CAPTURE_BATCH_NARGS];
	Oid			elemtypes[CAPTURE_BATCH_NARGS] = {TEXTOID, TEXTOID, JSONBOID, TEXTOID, TEXTOID,
	TEXTOID, JSONBOID, REGCLASSOID, TEXTOID, JSONBOID};

	for (int c = 0; c < CAPTURE_BATCH_NARGS; c++)
	{
		cols[c] = palloc(sizeof(Datum) * n);
		nulls[c] = palloc0(sizeof(bool) * n);
	}
	for (int i = 0; i < n; i++)
	{
		CaptureBuffered *b = &rows[i];

		cols[0][i] = CStringGetTextDatum(b->queue);
		if (b->component)
			cols[1][i] = CStringGetTextDatum(b->component);
		else
			nulls[1][i] = true;
		cols[2][i] = JsonbPGetDatum(b->payload);
		cols[3][i] = CStringGetTextDatum(b->error);
		cols[4][i] = CStringGetTextDatum(b->sqlstate);
		cols[5][i] = CStringGetTextDatum(dlq_error_class(b->sqlstate));
		cols[6][i] = JsonbPGetDatum(b->error_detail);
		cols[7][i] = ObjectIdGetDatum(b->source_relation);
		cols[8][i] = CStringGetTextDatum(b->operation);
		if (b->copy_line > 0)
			cols[9][i] = JsonbPGetDatum(capture_copy_metadata(b->copy_line));
		else
			nulls[9][i] = true;
	}
	for (int c = 0; c < CAPTURE_BATCH_NARGS; c++)
	{
		int16		typlen;
		bool		typbyval;
		char		typalign;
		int			dims[1] = {n};
		int			lbs[1] = {1};

		get_typlenbyvalalign(elemtypes[c], &typlen, &typbyval, &typalign);
		values[c] = PointerGetDatum(construct_md_array(cols[c], nulls[c], 1, dims, lbs,
													   elemtypes[c], typlen, typbyval, typalign));
	}
}

/*
 * The batch INSERT, prepared on first use and kept: the columns
 * dlq_store_message fills, for many rows at once.
 */
static SPIPlanPtr
capture_batch_plan_get(void)
{
	Oid			types[CAPTURE_BATCH_NARGS] = {TEXTARRAYOID, TEXTARRAYOID, JSONBARRAYOID,
	TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, JSONBARRAYOID, REGCLASSARRAYOID,
	TEXTARRAYOID, JSONBARRAYOID};
	const char *sql =
		"INSERT INTO dlq.messages"
		" (queue, component, payload, error, sqlstate, error_class, error_detail,"
		"  source_relation, operation, metadata, max_attempts, expires_at, next_retry_at)"
		" SELECT u.queue, u.component, u.payload, u.error, u.sqlstate,"
		"  " DLQ_QUEUE_ERROR_CLASS("u.sqlstate", "q") ","
		"  u.error_detail, u.source_relation, u.operation, u.metadata, q.max_attempts,"
		"  now() + q.retention,"
		"  CASE WHEN q.auto_retry AND (q.retry_on = 'all' OR "
		DLQ_QUEUE_ERROR_CLASS("u.sqlstate", "q") " = 'transient')"
		"   THEN now() + dlq.retry_delay(q, 1) END"
		" FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) WITH ORDINALITY"
		"  AS u(queue, component, payload, error, sqlstate, error_class,"
		"       error_detail, source_relation, operation, metadata, ord)"
		" JOIN dlq.queues q ON q.queue = u.queue ORDER BY u.ord";

	if (capture_batch_plan == NULL)
		capture_batch_plan = dlq_prepare_kept(sql, CAPTURE_BATCH_NARGS, types);
	return capture_batch_plan;
}

/* Insert n buffered rows into dlq.messages.  Runs as the owner, in SPI. */
static void
capture_store_rows(CaptureBuffered *rows, int n)
{
	Datum		values[CAPTURE_BATCH_NARGS];
	SPIPlanPtr	plan;

	capture_batch_arrays(rows, n, values);
	/*
	 * Queues seen for the first time are created, recording who diverted the
	 * row; a queue whose components do not include the trigger's component
	 * refuses the rows (22023), once per run of rows of one queue and component.
	 */
	for (int i = 0; i < n; i++)
	{
		bool		new_queue = i == 0 || strcmp(rows[i].queue, rows[i - 1].queue) != 0;

		if (new_queue || (rows[i].component == NULL) != (rows[i - 1].component == NULL) ||
			(rows[i].component && strcmp(rows[i].component, rows[i - 1].component) != 0))
			dlq_check_component(rows[i].queue, rows[i].component);
		if (new_queue)
			dlq_ensure_queue(rows[i].queue, rows[i].created_by);
	}
	plan = capture_batch_plan_get();
	if (dlq_execute_kept(plan, values, NULL, false, 0, SPI_OK_INSERT) != n)
		elog(ERROR, "could not store %d captured rows", n);
}

/*
 * Store the buffered rows of the current subtransaction and of those that
 * committed into it; rows of outer levels stay buffered.  Switches to the owner and starts its
 * own SPI.
 */
static void
capture_flush(void)
{
	SubTransactionId cur = GetCurrentSubTransactionId();
	int			keep = capture_nbuffered;
	CaptureBuffered *rows;
	int			n;
	DlqOwnerContext owner;
	volatile bool pushed = false;

	while (keep > 0 && capture_buffer[keep - 1].subid >= cur)
		keep--;
	n = capture_nbuffered - keep;
	capture_flush_at = keep + CAPTURE_BATCH;
	if (n == 0)
		return;

	/* Taken out first: what runs below may buffer and flush again. */
	rows = MemoryContextAlloc(TopTransactionContext, sizeof(CaptureBuffered) * n);
	memcpy(rows, capture_buffer + keep, sizeof(CaptureBuffered) * n);
	capture_nbuffered = keep;

	PG_TRY();
	{
		if (!ActiveSnapshotSet())
		{
			PushActiveSnapshot(GetTransactionSnapshot());
			pushed = true;
		}
		dlq_become_owner(&owner);
		SPI_connect();
		capture_store_rows(rows, n);
		SPI_finish();
		dlq_restore_caller(&owner);
		if (pushed)
			PopActiveSnapshot();
	}
	PG_CATCH();
	{
		capture_buffer_restore(keep, rows, n);
		PG_RE_THROW();
	}
	PG_END_TRY();
	pfree(rows);
}

static void
capture_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			/* A trigger on dlq's tables may divert more rows while we store. */
			for (int round = 0; capture_nbuffered > 0; round++)
			{
				if (round >= CAPTURE_MAX_FLUSH_ROUNDS)
					ereport(ERROR,
							(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
							 errmsg("storing captured rows keeps diverting more rows"),
							 errdetail("%d rounds of storing captured rows each diverted new ones.",
									   CAPTURE_MAX_FLUSH_ROUNDS),
							 errhint("Look for triggers on the tables of schema dlq that write to a table with failed-row capture.")));
				capture_flush();
			}
			break;
		default:
			/* Commit, abort, prepare: the buffer is gone with the transaction. */
			capture_buffer = NULL;
			capture_nbuffered = 0;
			capture_capacity = 0;
			capture_flush_at = CAPTURE_BATCH;
			capture_limits = NULL;
			capture_nlimits = 0;
			capture_limits_capacity = 0;
			capture_isolate_depth = 0;
			break;
	}
}

static void
capture_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						 SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		while (capture_nbuffered > 0 &&
			   capture_buffer[capture_nbuffered - 1].subid >= mySubid)
			capture_nbuffered--;
		while (capture_nlimits > 0 &&
			   capture_limits[capture_nlimits - 1].subid >= mySubid)
			capture_nlimits--;
	}
}

static void
capture_register_callbacks(void)
{
	if (capture_callbacks_registered)
		return;
	RegisterXactCallback(capture_xact_callback, NULL);
	RegisterSubXactCallback(capture_subxact_callback, NULL);
	capture_callbacks_registered = true;
}

/*
 * Reject limits (dlq_attach's max_errors and max_error_ratio): a statement
 * whose diverted rows pass the budget of its table fails, and everything it
 * did goes with it: its rows, the messages it stored in batches, and those
 * still buffered (a failed subtransaction's rows leave the buffer, above).
 *
 * The budget is in the arguments of a BEFORE ... FOR EACH STATEMENT trigger
 * running dlq_capture, which dlq_attach creates on the table (on the intake
 * view in isolate mode) only when a limit is set: ('queue',
 * 'max_errors=n', 'max_error_ratio=r'), either limit may be left out.  It
 * pushes a frame with the budget and the statement's counts; the row
 * triggers count into the topmost frame of their table (a statement that
 * runs inside, from a trigger, pushes its own above it and pops it when it
 * ends); max_errors is checked as each row is diverted, so that a load
 * stops at the first row too many; the AFTER STATEMENT trigger pops the
 * frame and checks max_error_ratio.  A frame pushed in a subtransaction
 * that aborts goes with it, and all go at the end of the transaction.
 *
 * A ratio of a few rows says little: it is taken of at least
 * CAPTURE_RATIO_MIN_ROWS rows, so a statement of fewer rows may divert
 * max_error_ratio * CAPTURE_RATIO_MIN_ROWS of them (one bad row of a
 * one-row INSERT is diverted, not refused, unless the ratio is below 0.01).
 */
#define CAPTURE_RATIO_MIN_ROWS 100

static void
capture_limits_push(Oid relid, int64 max_errors, double max_error_ratio)
{
	CaptureLimits *f;

	capture_register_callbacks();
	if (capture_nlimits == capture_limits_capacity)
	{
		int			n = Max(8, capture_limits_capacity * 2);

		capture_limits = capture_limits == NULL ?
			MemoryContextAlloc(TopTransactionContext, sizeof(CaptureLimits) * n) :
			repalloc(capture_limits, sizeof(CaptureLimits) * n);
		capture_limits_capacity = n;
	}
	f = &capture_limits[capture_nlimits++];
	f->relid = relid;
	f->target = relid;
	f->max_errors = max_errors;
	f->max_error_ratio = max_error_ratio;
	f->processed = 0;
	f->diverted = 0;
	f->subid = GetCurrentSubTransactionId();
}

/* The index of relid's innermost frame, or -1. */
static int
capture_limits_find(Oid relid)
{
	for (int i = capture_nlimits - 1; i >= 0; i--)
		if (capture_limits[i].relid == relid)
			return i;
	return -1;
}

/* The statement passed its budget: fail it, naming the table and the limit. */
static void
capture_limits_fail(const CaptureLimits *f, bool by_count)
{
	char	   *name = get_rel_name(f->target);
	char	   *nsp = get_namespace_name(get_rel_namespace(f->target));
	char	   *call;

	if (name == NULL || nsp == NULL)
		name = nsp = "?";
	call = psprintf("dlq_attach(%s%s, max_errors => ..., max_error_ratio => ...)",
					quote_literal_cstr(quote_qualified_identifier(nsp, name)),
					get_rel_relkind(f->relid) == RELKIND_VIEW ? ", mode => 'isolate'" : "");
	if (by_count)
		ereport(ERROR,
				(errcode(ERRCODE_DLQ_REJECT_LIMIT),
				 errmsg("too many failed rows for table \"%s\": " INT64_FORMAT " diverted, max_errors is " INT64_FORMAT,
						name, f->diverted, f->max_errors),
				 errdetail("The statement failed at its row " INT64_FORMAT " and keeps nothing: neither its rows nor the messages of its failed rows.",
						   f->processed),
				 errhint("Fix the input, or change the table's limits with %s; a limit left out is removed.",
						 call)));
	ereport(ERROR,
			(errcode(ERRCODE_DLQ_REJECT_LIMIT),
			 errmsg("too many failed rows for table \"%s\": " INT64_FORMAT " of " INT64_FORMAT " diverted, max_error_ratio is %s",
					name, f->diverted, f->processed, float8out_internal(f->max_error_ratio)),
			 f->processed < CAPTURE_RATIO_MIN_ROWS ?
			 errdetail("The statement keeps nothing: neither its rows nor the messages of its failed rows. A statement of fewer than %d rows counts as %d.",
					   CAPTURE_RATIO_MIN_ROWS, CAPTURE_RATIO_MIN_ROWS) :
			 errdetail("The statement keeps nothing: neither its rows nor the messages of its failed rows."),
			 errhint("Fix the input, or change the table's limits with %s; a limit left out is removed.",
					 call)));
}

/*
 * One row of relid's statement seen by its row trigger (target: the table
 * it goes to), diverted or not; fails the statement at the row past
 * max_errors.  Nothing to do when no statement has a budget.
 */
static void
capture_limits_count(Oid relid, Oid target, bool diverted)
{
	int			i;
	CaptureLimits *f;

	if (capture_nlimits == 0 || (i = capture_limits_find(relid)) < 0)
		return;
	f = &capture_limits[i];
	f->target = target;
	f->processed++;
	if (!diverted)
		return;
	f->diverted++;
	if (f->max_errors >= 0 && f->diverted > f->max_errors)
		capture_limits_fail(f, true);
}

/* End of relid's statement: pop its frame and check max_error_ratio. */
static void
capture_limits_end(Oid relid)
{
	int			i;
	CaptureLimits f;

	if (capture_nlimits == 0 || (i = capture_limits_find(relid)) < 0)
		return;
	f = capture_limits[i];
	memmove(capture_limits + i, capture_limits + i + 1,
			sizeof(CaptureLimits) * (capture_nlimits - i - 1));
	capture_nlimits--;
	if (f.max_error_ratio >= 0 &&
		(double) f.diverted > f.max_error_ratio * (double) Max(f.processed, CAPTURE_RATIO_MIN_ROWS))
		capture_limits_fail(&f, false);
}

/* One 'max_errors=n' or 'max_error_ratio=r' argument of trigger tg. */
static void
capture_limits_option(Trigger *tg, const char *arg, int64 *max_errors,
					  double *max_error_ratio)
{
	const char *eq = strchr(arg, '=');
	size_t		keylen = eq ? eq - arg : 0;
	char	   *end = NULL;
	bool		ok = false;

	errno = 0;
	if (keylen == strlen("max_errors") && strncmp(arg, "max_errors", keylen) == 0)
	{
		*max_errors = (int64) strtoll(eq + 1, &end, 10);
		ok = *max_errors >= 0;
	}
	else if (keylen == strlen("max_error_ratio") && strncmp(arg, "max_error_ratio", keylen) == 0)
	{
		*max_error_ratio = strtod(eq + 1, &end);
		ok = *max_error_ratio >= 0 && *max_error_ratio < 1;
	}
	if (!ok || errno != 0 || end == eq + 1 || *end != '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid reject limit \"%s\" in trigger \"%s\"", arg, tg->tgname),
				 errhint("Pass max_errors=n with n at least 0, or max_error_ratio=r with r at least 0 and below 1; dlq_attach sets them.")));
}

/*
 * dlq_capture as a BEFORE STATEMENT trigger: the statement's budget, from
 * the arguments ('queue', limit...), pushed as its frame.
 */
static void
capture_limits_begin(TriggerData *trigdata)
{
	Trigger    *tg = trigdata->tg_trigger;
	int64		max_errors = -1;
	double		max_error_ratio = -1;

	if (tg->tgnargs < 2)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("trigger \"%s\" must pass the queue name and at least one reject limit",
						tg->tgname)));
	(void) dlq_check_name("queue name", cstring_to_text(tg->tgargs[0]), false);
	for (int i = 1; i < tg->tgnargs; i++)
		capture_limits_option(tg, tg->tgargs[i], &max_errors, &max_error_ratio);
	capture_limits_push(RelationGetRelid(trigdata->tg_relation), max_errors, max_error_ratio);
}

/* Buffer one diverted row; copies everything into TopTransactionContext. */
static void
capture_buffer_row(const char *queue, const char *component, Jsonb *payload,
				   const char *error, const char *sqlstate, Jsonb *error_detail,
				   Oid source_relation, const char *operation, int64 copy_line)
{
	MemoryContext old;
	CaptureBuffered *b;

	capture_check_size(payload, error);
	capture_register_callbacks();
	capture_buffer_reserve(1);
	old = MemoryContextSwitchTo(TopTransactionContext);
	b = &capture_buffer[capture_nbuffered];
	b->queue = pstrdup(queue);
	b->component = component ? pstrdup(component) : NULL;
	b->payload = (Jsonb *) PG_DETOAST_DATUM_COPY(JsonbPGetDatum(payload));
	b->error = pstrdup(error);
	strlcpy(b->sqlstate, sqlstate, sizeof(b->sqlstate));
	b->error_detail = (Jsonb *) PG_DETOAST_DATUM_COPY(JsonbPGetDatum(error_detail));
	b->source_relation = source_relation;
	b->operation = operation;
	b->created_by = GetUserId();
	b->copy_line = copy_line;
	b->subid = GetCurrentSubTransactionId();
	MemoryContextSwitchTo(old);
	/* Counted only once complete: a copy that fails leaves no half row. */
	capture_nbuffered++;

	if (capture_nbuffered >= capture_flush_at)
		capture_flush();
}

/*
 * Refuse to capture rows of a system catalog or of one of dlq's own tables:
 * storing a captured row writes dlq's tables, which would fire the trigger
 * again.  Only superusers can put a trigger there; dlq_attach never does.
 * The table's owner is passed as the role, so that only the kind of table is
 * checked here, not who fired the trigger.
 */
static void
capture_check_relation(Relation rel)
{
	char		relkind = rel->rd_rel->relkind;

	/* Foreign tables are never catalogs or dlq's. */
	if (relkind == RELKIND_RELATION || relkind == RELKIND_PARTITIONED_TABLE)
		dlq_check_bindable_relation(RelationGetRelid(rel), rel->rd_rel->relowner);
}

/*
 * capture_check_relation for the statement trigger, once per transaction
 * while the table's cache entry stands (a change to the table drops it): a
 * replay inserts each row in a statement of its own, and the check reads
 * pg_extension and pg_depend.
 */
static void
capture_check_relation_cached(Relation rel)
{
	char		relkind = rel->rd_rel->relkind;
	CaptureRel *entry;

	if (relkind != RELKIND_RELATION && relkind != RELKIND_PARTITIONED_TABLE)
		return;
	entry = dlq_predict_get_rel(rel);
	if (entry->bindable_lxid == DLQ_LXID)
		return;
	capture_check_relation(rel);
	entry->bindable_lxid = DLQ_LXID;
}

/*
 * The table a capture trigger was made on: for a trigger cloned onto a
 * partition, the table of the trigger it was cloned from (its topmost
 * parent), else the trigger's own table.  This is what a diverted row
 * records as its source_relation: dlq_attach on a partitioned table records
 * that table, and a trigger somebody made on a partition they own records
 * that partition, never a table above it they do not own.
 */
static Oid
capture_trigger_relation(Trigger *trigger, Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	Oid			tgoid = trigger->tgoid;
	Relation	tgrel;

	if (!trigger->tgisclone)
		return relid;
	tgrel = table_open(TriggerRelationId, AccessShareLock);
	while (OidIsValid(tgoid))
	{
		ScanKeyData key;
		SysScanDesc scan;
		HeapTuple	tup;
		Form_pg_trigger tg;

		ScanKeyInit(&key, Anum_pg_trigger_oid, BTEqualStrategyNumber,
					F_OIDEQ, ObjectIdGetDatum(tgoid));
		scan = systable_beginscan(tgrel, TriggerOidIndexId, true, NULL, 1, &key);
		tup = systable_getnext(scan);
		if (!HeapTupleIsValid(tup))
			elog(ERROR, "could not find trigger %u", tgoid);
		tg = (Form_pg_trigger) GETSTRUCT(tup);
		relid = tg->tgrelid;
		tgoid = tg->tgparentid;
		systable_endscan(scan);
	}
	table_close(tgrel, AccessShareLock);
	return relid;
}

/* What dlq_capture works out once per statement, kept in fn_extra. */
typedef struct CaptureTrigger
{
	const char *queue;
	const char *component;
	Oid			source_relation;
} CaptureTrigger;

/*
 * The queue, component and source table of dlq_capture's trigger: the
 * table and the queue name are checked on the first row of a statement,
 * and the answer kept in fn_extra for the rest.
 */
static CaptureTrigger *
capture_trigger_info(FunctionCallInfo fcinfo, Relation rel)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	MemoryContext old;
	CaptureTrigger *info;
	Oid			source;

	if (fcinfo->flinfo->fn_extra != NULL)
		return (CaptureTrigger *) fcinfo->flinfo->fn_extra;
	capture_check_relation(rel);
	source = capture_trigger_relation(trigdata->tg_trigger, rel);
	old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);
	info = palloc(sizeof(CaptureTrigger));
	capture_trigger_args(trigdata->tg_trigger, 0, &info->queue, &info->component);
	info->source_relation = source;
	MemoryContextSwitchTo(old);
	fcinfo->flinfo->fn_extra = info;
	return info;
}

PG_FUNCTION_INFO_V1(dlq_capture);

/*
 * dlq_capture(queue [, component]): BEFORE INSERT OR UPDATE FOR EACH ROW.
 */
Datum
dlq_capture(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleTableSlot *slot;
	TupleTableSlot *oldslot = NULL;
	HeapTuple	tuple;
	CaptureRel *entry;
	CaptureViolation v;
	CaptureTrigger *info;
	bool		is_update;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("dlq_capture must be called as a trigger")));
	/*
	 * The AFTER ... FOR EACH STATEMENT companion checks the statement's
	 * reject limits and stores what was buffered; the BEFORE one, made only
	 * with reject limits, sets them for the statement.
	 */
	if (TRIGGER_FIRED_AFTER(trigdata->tg_event) &&
		TRIGGER_FIRED_FOR_STATEMENT(trigdata->tg_event))
	{
		capture_check_relation_cached(trigdata->tg_relation);
		capture_limits_end(RelationGetRelid(trigdata->tg_relation));
		capture_flush();
		return PointerGetDatum(NULL);
	}
	if (TRIGGER_FIRED_BEFORE(trigdata->tg_event) &&
		TRIGGER_FIRED_FOR_STATEMENT(trigdata->tg_event) &&
		(TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) ||
		 TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event)))
	{
		capture_limits_begin(trigdata);
		return PointerGetDatum(NULL);
	}
	if (!TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!(TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) ||
		  TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event)))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("dlq_capture must be fired BEFORE INSERT OR UPDATE FOR EACH ROW")));

	rel = trigdata->tg_relation;
	is_update = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event);
	if (is_update)
	{
		tuple = trigdata->tg_newtuple;
		slot = trigdata->tg_newslot;
		oldslot = trigdata->tg_trigslot;
	}
	else
	{
		tuple = trigdata->tg_trigtuple;
		slot = trigdata->tg_trigslot;
	}

	if (dlq_reapply_validated(RelationGetRelid(rel)))
		return PointerGetDatum(tuple);

	info = capture_trigger_info(fcinfo, rel);
	entry = dlq_predict_get_rel(rel);
	if (dlq_predict_row(entry, rel, slot, oldslot, &v))
	{
		capture_limits_count(info->source_relation, info->source_relation, false);
		return PointerGetDatum(tuple);
	}

	/* The row dlq_reapply_row inserts, which reports it; no new message. */
	if (dlq_reapply_keep_violation(RelationGetRelid(rel), &v))
		return PointerGetDatum(NULL);

	/*
	 * Row-level security checks a new row after the BEFORE triggers: a row
	 * diverted here would skip the policies of the role that wrote it, and
	 * could be replayed later by a role they do not bind.  Such a row goes
	 * on to the executor, which raises the policy's error or the
	 * constraint's, as it would without dlq.
	 */
	if (check_enable_rls(RelationGetRelid(rel), InvalidOid, true) == RLS_ENABLED)
	{
		capture_limits_count(info->source_relation, info->source_relation, false);
		return PointerGetDatum(tuple);
	}

	/* Past the statement's max_errors, it fails here. */
	capture_limits_count(info->source_relation, info->source_relation, true);
	capture_buffer_row(info->queue, info->component,
					   capture_row_to_jsonb(heap_copy_tuple_as_datum(tuple, RelationGetDescr(rel))),
					   v.message, unpack_sql_state(v.sqlerrcode), dlq_violation_detail(rel, &v),
					   info->source_relation, is_update ? "UPDATE" : "INSERT",
					   capture_copy_line(rel));
	return PointerGetDatum(NULL);
}

/*
 * The arguments of dlq_capture_isolate's trigger: queue, the target table
 * and optionally a component.  The target argument is not read: the table
 * is the one the intake view reads (capture_isolate_target).  dlq_attach
 * writes the table's name there for whoever reads the trigger; before 1.1
 * it wrote the table's OID, which names nothing, or another table, once
 * the database is dumped and restored.
 */
static void
capture_isolate_args(Trigger *trigger, const char **queue, const char **component)
{
	Trigger		shifted = *trigger;
	char	   *args[2];

	if (trigger->tgnargs < 2)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("trigger \"%s\" must pass the queue name and the target table",
						trigger->tgname)));

	/* queue [, component] are arguments 0 and 2 */
	args[0] = trigger->tgargs[0];
	args[1] = trigger->tgnargs > 2 ? trigger->tgargs[2] : NULL;
	shifted.tgargs = args;
	shifted.tgnargs = trigger->tgnargs > 2 ? 2 : 1;
	capture_trigger_args(&shifted, 0, queue, component);
}

/*
 * The table rows inserted into view go to: the one its query reads, as in
 * the view dlq_attach made, and never a view, one of dlq's tables or a
 * catalog (captured rows record it as their source).  Locked until the end
 * of the transaction, so that it keeps its name until the INSERT has run.
 */
static Oid
capture_isolate_target(Trigger *trigger, Relation view)
{
	Oid			target = dlq_intake_view_target(view);
	Relation	targetrel;

	if (!OidIsValid(target))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("view \"%s\" of trigger \"%s\" does not read exactly one table of its owner",
						RelationGetRelationName(view), trigger->tgname),
				 errdetail("The trigger inserts each row into the table its view reads, which the view's owner must own."),
				 errhint("Create intake views with dlq_attach(table, mode => 'isolate').")));
	targetrel = try_relation_open(target, AccessShareLock);
	if (targetrel == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u read by view \"%s\" does not exist",
						target, RelationGetRelationName(view))));
	/* A table (not a view or a foreign table), not a catalog, not dlq's. */
	dlq_check_bindable_relation(target, targetrel->rd_rel->relowner);
	relation_close(targetrel, NoLock);
	return target;
}

/*
 * The INSERT of a row into a table, prepared once per table and kept for
 * the life of the backend (one per statement, kept forever, was a leak).
 * Its SQL names the table, and a kept plan is parsed again by that name
 * when it is invalidated (the table or its schema renamed, another created
 * under the old name): it is used only while the name it was made with is
 * still the table's, and prepared again otherwise.  The caller holds a lock
 * on the table, so the name cannot change before the plan runs.  A plan
 * replaced while an INSERT runs (one that renamed its own table and
 * inserted through the view again) may be the one running: it is left
 * allocated rather than freed under it.
 */
typedef struct CaptureIsolatePlan
{
	Oid			target;			/* hash key */
	char	   *name;			/* in TopMemoryContext */
	SPIPlanPtr	plan;
} CaptureIsolatePlan;

static HTAB *capture_isolate_plans = NULL;

/* target's INSERT plan.  Inside SPI. */
static SPIPlanPtr
capture_isolate_plan(Oid target)
{
	Oid			types[1] = {JSONBOID};
	char	   *name = quote_qualified_identifier(get_namespace_name(get_rel_namespace(target)),
												  get_rel_name(target));
	CaptureIsolatePlan *entry = NULL;
	SPIPlanPtr	plan;

	if (capture_isolate_plans == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(CaptureIsolatePlan);
		capture_isolate_plans = hash_create("dlq isolate plans", 16, &ctl,
											HASH_ELEM | HASH_BLOBS);
	}
	else
		entry = hash_search(capture_isolate_plans, &target, HASH_FIND, NULL);
	if (entry != NULL && strcmp(entry->name, name) == 0)
		return entry->plan;

	/* Prepared before the entry changes: an error leaves it as it was. */
	plan = dlq_prepare_kept(psprintf("INSERT INTO %s SELECT * FROM pg_catalog.jsonb_populate_record(NULL::%s, $1)",
									 name, name), 1, types);
	if (entry != NULL)
	{
		if (capture_isolate_depth == 0)
			SPI_freeplan(entry->plan);
		pfree(entry->name);
	}
	else
		entry = hash_search(capture_isolate_plans, &target, HASH_ENTER, NULL);
	entry->name = MemoryContextStrdup(TopMemoryContext, name);
	entry->plan = plan;
	return plan;
}

/*
 * Insert payload through plan in a subtransaction.  Returns NULL when the
 * row went in, else the error, copied into oldcxt (the trigger's context
 * before SPI_connect), which is current again on return.
 */
static ErrorData *
capture_isolate_insert(SPIPlanPtr plan, Jsonb *payload, MemoryContext oldcxt)
{
	ResourceOwner oldowner = CurrentResourceOwner;
	ErrorData  *volatile edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	capture_isolate_depth++;
	PG_TRY();
	{
		Datum		values[1] = {JsonbPGetDatum(payload)};

		dlq_execute_kept(plan, values, NULL, false, 0, SPI_OK_INSERT);
		capture_isolate_depth--;
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		capture_isolate_depth--;
		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_END_TRY();
	return edata;
}

PG_FUNCTION_INFO_V1(dlq_capture_isolate);

/*
 * dlq_capture_isolate(queue, target [, component]): INSTEAD OF INSERT FOR
 * EACH ROW on an intake view.  Each row is inserted into target inside a
 * subtransaction; any error sends the row to the DLQ instead.
 */
Datum
dlq_capture_isolate(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Oid			target;
	const char *queue;
	const char *component;
	Jsonb	   *payload;
	MemoryContext oldcxt = CurrentMemoryContext;
	ErrorData  *edata;
	int64		copy_line;
	SPIPlanPtr	plan;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_INSTEAD(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("dlq_capture_isolate must be fired INSTEAD OF INSERT FOR EACH ROW")));

	capture_register_callbacks();
	capture_isolate_args(trigdata->tg_trigger, &queue, &component);
	/* Read before SPI runs anything: a COPY into the view is on top now. */
	copy_line = capture_copy_line(trigdata->tg_relation);
	payload = capture_row_to_jsonb(heap_copy_tuple_as_datum(trigdata->tg_trigtuple,
															RelationGetDescr(trigdata->tg_relation)));

	/* The target, checked on the statement's first row. */
	if (fcinfo->flinfo->fn_extra == NULL)
	{
		Oid		   *checked = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(Oid));

		*checked = capture_isolate_target(trigdata->tg_trigger, trigdata->tg_relation);
		fcinfo->flinfo->fn_extra = checked;
	}
	target = *(Oid *) fcinfo->flinfo->fn_extra;

	SPI_connect();
	plan = capture_isolate_plan(target);
	edata = capture_isolate_insert(plan, payload, oldcxt);
	if (edata == NULL)
		capture_limits_count(RelationGetRelid(trigdata->tg_relation), target, false);
	else
	{
		/*
		 * Query cancel and the like are not the row's fault.  Nor is a
		 * missing privilege or a row-level security policy: a role that may
		 * not write the row into target must not get it there through a
		 * later replay by one that may.
		 */
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
			edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN ||
			edata->sqlerrcode == ERRCODE_INSUFFICIENT_PRIVILEGE)
			ReThrowError(edata);

		/* Past the statement's max_errors, it fails here. */
		capture_limits_count(RelationGetRelid(trigdata->tg_relation), target, true);
		capture_store(queue, component, payload, edata->message,
					  unpack_sql_state(edata->sqlerrcode),
					  dlq_error_detail_json(edata->detail, edata->schema_name,
											edata->table_name, edata->column_name,
											edata->constraint_name, true,
											edata->datatype_name),
					  target, "INSERT", copy_line);
		FreeErrorData(edata);
	}
	SPI_finish();
	return PointerGetDatum(NULL);
}
