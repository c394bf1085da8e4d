/*-------------------------------------------------------------------------
 *
 * redrive.c
 *	  Redrive tasks (DESIGN 7.3, like SQS's message move tasks):
 *	  dlq_redrive_start, dlq_redrive_status, dlq_redrive_cancel.
 *
 *	  A task is a row of dlq.redrive_tasks: a queue, a rate, the filters of
 *	  dlq_reprocess_all, force, max_messages, reason and ticket, and the role
 *	  that started it.  The worker runs it (worker.c, the "redrive" step, and
 *	  the dlq.worker_redrive_* functions of dlq--1.0--1.1.sql): every tick it
 *	  takes the next candidates after the task's cursor that the rate allows,
 *	  replays them with dlq_reprocess as that role, and moves the cursor and
 *	  the counters in the same transaction.  This file only creates, shows
 *	  and cancels tasks.
 *
 *	  Who may call: dlq_redrive_start and dlq_redrive_cancel need
 *	  dlq_operator, dlq_redrive_status dlq_reader (the table is readable by
 *	  dlq_reader too, filters and reason included, like dlq.events).  A task
 *	  replays as its creator, so starting one on a queue bound to a table
 *	  needs INSERT on that table, checked here at once and by the worker
 *	  again at every tick.  At most one task per queue is running or paused:
 *	  two would replay the same queue at the sum of their rates and take
 *	  each other's candidates.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"

#include "dlq.h"
#include "filter.h"
#include "version.h"

/* The fastest rate a task may ask for, in messages per second. */
#define DLQ_MAX_REDRIVE_RATE 100000

/* Parameters of the insert: $1 queue, ..., $12 creator; the filter in $3..$7. */
#define REDRIVE_INSERT_NARGS 12

static SPIPlanPtr insert_plans[DLQ_FILTER_VARIANTS];
static SPIPlanPtr lock_queue_plan = NULL;
static SPIPlanPtr active_plan = NULL;
static SPIPlanPtr status_plan = NULL;
static SPIPlanPtr lock_task_plan = NULL;
static SPIPlanPtr cancel_plan = NULL;

/*
 * The insert of a task with a filter: its last_id is the queue's newest
 * message, its total the candidates up to it (at most max_messages, $9).
 */
static SPIPlanPtr
redrive_insert_plan(const DlqFilter *filter)
{
	int			flags = dlq_filter_flags(filter);

	if (insert_plans[flags] == NULL)
	{
		Oid			types[REDRIVE_INSERT_NARGS] = {TEXTOID, INT4OID};
		StringInfoData sql;

		dlq_filter_types(types + 2);
		types[7] = BOOLOID;
		types[8] = INT8OID;
		types[9] = TEXTOID;
		types[10] = TEXTOID;
		types[11] = OIDOID;
		initStringInfo(&sql);
		appendStringInfoString(&sql,
							   "WITH c AS (SELECT coalesce(max(m.message_id), 0) AS last_id"
							   " FROM dlq.messages m WHERE m.slot = 0 AND m.queue = $1)"
							   " INSERT INTO dlq.redrive_tasks (queue, rate_per_second, component,"
							   " sqlstate, error_class, since, until, force, max_messages, reason,"
							   " ticket, created_by, last_id, total)"
							   " SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,"
							   " $12::pg_catalog.regrole, c.last_id,"
							   " (SELECT pg_catalog.count(*) FROM (SELECT 1 FROM dlq.messages m"
							   " WHERE m.slot = 0 AND m.queue = $1 AND m.message_id <= c.last_id"
							   " AND (m.status = 'pending' OR ($8 AND m.status = 'review'))");
		dlq_filter_sql(&sql, flags, "m", 3);
		appendStringInfoString(&sql, " LIMIT $9) x) FROM c RETURNING task_id, total");
		insert_plans[flags] = dlq_prepare_kept(sql.data, REDRIVE_INSERT_NARGS, types);
	}
	return insert_plans[flags];
}

/* EXECUTE on a function (object_aclcheck from PostgreSQL 16 on). */
static AclResult
redrive_proc_aclcheck(Oid proc, Oid role)
{
#if PG_VERSION_NUM >= 160000
	return object_aclcheck(ProcedureRelationId, proc, role, ACL_EXECUTE);
#else
	return pg_proc_aclcheck(proc, role, ACL_EXECUTE);
#endif
}

/*
 * Lock the queue's row, so that two starts on one queue go one after the
 * other (42704 when there is none), and refuse a second active task
 * (55000), and a replay target the caller may not write to or a replay
 * handler it may not execute (42501).
 */
static void
redrive_check_queue(const char *queue, Oid caller)
{
	Datum		value = CStringGetTextDatum(queue);
	bool		isnull;
	Datum		d;

	if (lock_queue_plan == NULL)
	{
		Oid			types[1] = {TEXTOID};

		lock_queue_plan = dlq_prepare_kept("SELECT replay_target, replay_handler FROM dlq.queues"
										   " WHERE queue = $1 FOR UPDATE", 1, types);
		active_plan = dlq_prepare_kept("SELECT task_id, state FROM dlq.redrive_tasks"
									   " WHERE queue = $1 AND state IN ('running', 'paused')",
									   1, types);
	}
	dlq_execute_kept(lock_queue_plan, &value, NULL, false, 1, SPI_OK_SELECT);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("queue \"%s\" does not exist", queue)));
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull && pg_class_aclcheck(DatumGetObjectId(d), caller, ACL_INSERT) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to replay into table %s",
						get_rel_name(DatumGetObjectId(d)) ? get_rel_name(DatumGetObjectId(d)) : "?"),
				 errdetail("A redrive task of queue \"%s\" re-applies its rows to that table as the role that started it, which lacks INSERT on it.",
						   queue)));
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	if (!isnull && redrive_proc_aclcheck(DatumGetObjectId(d), caller) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to replay through function %s",
						format_procedure(DatumGetObjectId(d))),
				 errdetail("A redrive task of queue \"%s\" calls that function as the role that started it, which lacks EXECUTE on it.",
						   queue)));

	dlq_execute_kept(active_plan, &value, NULL, false, 1, SPI_OK_SELECT);
	if (SPI_processed > 0)
	{
		int64		task = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
													   SPI_tuptable->tupdesc, 1, &isnull));

		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("queue \"%s\" already has a redrive task", queue),
				 errdetail("Task " INT64_FORMAT " is %s; a queue has at most one running or paused task.",
						   task, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2)),
				 errhint("Cancel it with dlq_redrive_cancel(" INT64_FORMAT ") or wait until it ends.",
						 task)));
	}
}

/* max_messages of a task: NULL for none, else at least 1 (22023). */
static int64
redrive_arg_max_messages(FunctionCallInfo fcinfo, int argno)
{
	if (PG_ARGISNULL(argno))
		return 0;
	if (PG_GETARG_INT64(argno) < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_messages must be positive"),
				 errhint("Pass NULL to redrive every message.")));
	return PG_GETARG_INT64(argno);
}

/* rate_per_second: 1 to DLQ_MAX_REDRIVE_RATE (22004, 22023). */
static int32
redrive_arg_rate(FunctionCallInfo fcinfo, int argno)
{
	int32		rate;

	dlq_check_not_null(fcinfo, argno, "rate_per_second");
	rate = PG_GETARG_INT32(argno);
	if (rate < 1 || rate > DLQ_MAX_REDRIVE_RATE)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate_per_second must be between 1 and %d", DLQ_MAX_REDRIVE_RATE),
				 errdetail("rate_per_second is %d.", rate)));
	return rate;
}

/* The detail of the redrive_started event. */
static Jsonb *
redrive_started_detail(int64 task, int32 rate, const DlqFilter *filter, bool force,
					   int64 max_messages, int64 total, const char *reason,
					   const char *ticket)
{
	StringInfoData more;

	initStringInfo(&more);
	appendStringInfo(&more, ", \"task_id\": " INT64_FORMAT ", \"rate_per_second\": %d"
					 ", \"force\": %s, \"total\": " INT64_FORMAT,
					 task, rate, force ? "true" : "false", total);
	if (max_messages > 0)
		appendStringInfo(&more, ", \"max_messages\": " INT64_FORMAT, max_messages);
	dlq_filter_json(&more, filter);
	return dlq_reason_detail(reason, ticket, more.data);
}

PG_FUNCTION_INFO_V1(dlq_redrive_start);

/*
 * dlq_redrive_start(queue, rate_per_second, component, sqlstate,
 *					 error_class, since, until, force, max_messages,
 *					 reason, ticket) returns bigint
 *
 * Start a task that the worker runs; returns its id.
 */
Datum
dlq_redrive_start(PG_FUNCTION_ARGS)
{
	static const DlqFilterArgs filter_args = {2, 3, 4, 5, 6};
	char	   *queue;
	int32		rate;
	DlqFilter	filter;
	bool		force;
	int64		max_messages;
	char	   *reason;
	char	   *ticket;
	DlqOwnerContext owner;
	Datum		values[REDRIVE_INSERT_NARGS];
	char		nulls[REDRIVE_INSERT_NARGS];
	bool		isnull;
	int64		task;
	int64		total;

	queue = dlq_check_name("queue name", PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0), false);
	rate = redrive_arg_rate(fcinfo, 1);
	dlq_filter_parse(fcinfo, &filter_args, &filter);
	dlq_check_not_null(fcinfo, 7, "force");
	force = PG_GETARG_BOOL(7);
	max_messages = redrive_arg_max_messages(fcinfo, 8);
	reason = dlq_arg_reason(fcinfo, 9);
	ticket = dlq_arg_ticket(fcinfo, 10);
	dlq_require_current_schema();

	dlq_become_owner(&owner);
	SPI_connect();
	redrive_check_queue(queue, owner.caller);

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(queue);
	values[1] = Int32GetDatum(rate);
	dlq_filter_values(&filter, values + 2, nulls + 2);
	values[7] = BoolGetDatum(force);
	values[8] = Int64GetDatum(max_messages);
	nulls[8] = max_messages > 0 ? ' ' : 'n';
	values[9] = reason ? CStringGetTextDatum(reason) : (Datum) 0;
	nulls[9] = reason ? ' ' : 'n';
	values[10] = ticket ? CStringGetTextDatum(ticket) : (Datum) 0;
	nulls[10] = ticket ? ' ' : 'n';
	values[11] = ObjectIdGetDatum(owner.caller);
	if (dlq_execute_kept(redrive_insert_plan(&filter), values, nulls, false, 0,
						 SPI_OK_INSERT_RETURNING) != 1)
		elog(ERROR, "could not create a redrive task");
	task = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	total = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));

	dlq_audit("redrive_started", GetUserNameFromId(owner.caller, false), queue,
			  (Datum) 0, false, 0, NULL, 0,
			  redrive_started_detail(task, rate, &filter, force, max_messages, total,
									 reason, ticket));
	SPI_finish();
	dlq_restore_caller(&owner);

	PG_RETURN_INT64(task);
}

/* 02000 for a task that does not exist. */
static void
redrive_no_task(int64 task)
{
	ereport(ERROR,
			(errcode(ERRCODE_NO_DATA),
			 errmsg("redrive task " INT64_FORMAT " does not exist", task)));
}

PG_FUNCTION_INFO_V1(dlq_redrive_status);

/*
 * dlq_redrive_status(task_id) returns jsonb
 *
 * dlq.redrive_task_json of the task: state, moved, failed, started_at,
 * finished_at, eta, rate, queue, filters, pause, created_by.
 */
Datum
dlq_redrive_status(PG_FUNCTION_ARGS)
{
	int64		task;
	Datum		value;
	DlqOwnerContext owner;
	MemoryContext caller_cxt = CurrentMemoryContext;
	MemoryContext old;
	bool		isnull;
	Jsonb	   *result;

	dlq_check_not_null(fcinfo, 0, "task_id");
	task = PG_GETARG_INT64(0);
	value = Int64GetDatum(task);
	dlq_require_current_schema();

	dlq_become_owner(&owner);
	SPI_connect();
	if (status_plan == NULL)
	{
		Oid			types[1] = {INT8OID};

		status_plan = dlq_prepare_kept("SELECT dlq.redrive_task_json(t)"
									   " FROM dlq.redrive_tasks t WHERE t.task_id = $1",
									   1, types);
	}
	dlq_execute_kept(status_plan, &value, NULL, true, 1, SPI_OK_SELECT);
	if (SPI_processed == 0)
		redrive_no_task(task);
	old = MemoryContextSwitchTo(caller_cxt);
	result = DatumGetJsonbPCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
											  1, &isnull));
	MemoryContextSwitchTo(old);
	SPI_finish();
	dlq_restore_caller(&owner);

	PG_RETURN_JSONB_P(result);
}

PG_FUNCTION_INFO_V1(dlq_redrive_cancel);

/*
 * dlq_redrive_cancel(task_id) returns boolean
 *
 * Cancel a running or paused task: true.  A task that has already ended
 * (finished, cancelled, failed) stays as it is: false.  The row lock waits
 * for a tick of the worker under way, so that a tick's replay and its
 * counters are never half counted.
 */
Datum
dlq_redrive_cancel(PG_FUNCTION_ARGS)
{
	int64		task;
	Datum		values[3];
	DlqOwnerContext owner;
	char	   *state;
	bool		cancelled;

	dlq_check_not_null(fcinfo, 0, "task_id");
	task = PG_GETARG_INT64(0);
	dlq_require_current_schema();

	dlq_become_owner(&owner);
	SPI_connect();
	if (lock_task_plan == NULL)
	{
		Oid			types[3] = {INT8OID, TEXTOID, TEXTOID};

		lock_task_plan = dlq_prepare_kept("SELECT state FROM dlq.redrive_tasks"
										  " WHERE task_id = $1 FOR UPDATE", 1, types);
		cancel_plan = dlq_prepare_kept("SELECT dlq.redrive_end($1, 'cancelled', $2, $3)",
									   3, types);
	}
	values[0] = Int64GetDatum(task);
	dlq_execute_kept(lock_task_plan, values, NULL, false, 1, SPI_OK_SELECT);
	if (SPI_processed == 0)
		redrive_no_task(task);
	state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	cancelled = strcmp(state, "running") == 0 || strcmp(state, "paused") == 0;
	if (cancelled)
	{
		char	   *actor = GetUserNameFromId(owner.caller, false);

		values[1] = CStringGetTextDatum(psprintf("cancelled by %s", actor));
		values[2] = CStringGetTextDatum(actor);
		dlq_execute_kept(cancel_plan, values, NULL, false, 0, SPI_OK_SELECT);
	}
	SPI_finish();
	dlq_restore_caller(&owner);

	PG_RETURN_BOOL(cancelled);
}
