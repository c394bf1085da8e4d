/*-------------------------------------------------------------------------
 *
 * queue.c
 *	  Queue settings: dlq_configure, dlq_pause and dlq_resume.
 *
 *	  Cold paths, but in C like the rest so that the audit trail records
 *	  the calling role (a SECURITY DEFINER function would only see itself).
 *	  Every setting is validated here with SQLSTATE 22023 rather than left
 *	  to the table's CHECK constraints.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "dlq.h"
#include "version.h"

#define CONFIGURE_NARGS 13
/* The plans take the arguments and then the caller, for retry_role. */
#define CONFIGURE_NPARAMS (CONFIGURE_NARGS + 1)

static SPIPlanPtr configure_plan = NULL;
static SPIPlanPtr configure_detail_plan = NULL;
static SPIPlanPtr pause_plan = NULL;
static SPIPlanPtr queue_exists_plan = NULL;

/* Raise 42704 unless the queue exists.  Inside SPI, as the owner. */
void
dlq_check_queue_exists(const char *queue)
{
	Datum		value = CStringGetTextDatum(queue);

	if (queue_exists_plan == NULL)
	{
		Oid			types[1] = {TEXTOID};

		queue_exists_plan = dlq_prepare_kept(
											 "SELECT 1 FROM dlq.queues WHERE queue = $1", 1, types);
	}
	dlq_execute_kept(queue_exists_plan, &value, NULL, true, 1, SPI_OK_SELECT);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("queue \"%s\" does not exist", queue)));
}

/*
 * Validate the arguments of dlq_configure, each with SQLSTATE 22023 (22004
 * for a NULL queue name) before anything is written; returns the queue.
 */
static char *
queue_check_configure_args(FunctionCallInfo fcinfo)
{
	char	   *queue;

	queue = dlq_check_name("queue name", PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0), false);
	if (!PG_ARGISNULL(1) && (PG_GETARG_INT32(1) < 1 || PG_GETARG_INT32(1) > 1000))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_attempts must be between 1 and 1000")));
	(void) dlq_check_interval(fcinfo, 2, "retention", false, DLQ_MAX_AGE_YEARS);
	(void) dlq_check_interval(fcinfo, 3, "resolved_retention", true, DLQ_MAX_AGE_YEARS);
	if (!PG_ARGISNULL(4) && PG_GETARG_OID(4) != InvalidOid)
	{
		char		relkind = get_rel_relkind(PG_GETARG_OID(4));

		if (relkind != RELKIND_RELATION && relkind != RELKIND_PARTITIONED_TABLE)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("replay_target must be a table"),
					 errhint("Pass 0 to clear the replay target.")));
		/* Replays write into it: only its owner may bind it. */
		dlq_check_bindable_relation(PG_GETARG_OID(4), GetUserId());
	}
	if (!PG_ARGISNULL(5))
		(void) dlq_check_channel(PG_GETARG_TEXT_PP(5));
	(void) dlq_check_interval(fcinfo, 8, "retry_base", false, DLQ_MAX_DELAY_YEARS);
	if (!PG_ARGISNULL(9) && (isnan(PG_GETARG_FLOAT8(9)) || isinf(PG_GETARG_FLOAT8(9)) ||
							 PG_GETARG_FLOAT8(9) < 1 || PG_GETARG_FLOAT8(9) > 1000))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("retry_factor must be between 1 and 1000")));
	(void) dlq_check_interval(fcinfo, 10, "retry_max", false, DLQ_MAX_DELAY_YEARS);
	if (!PG_ARGISNULL(11) && PG_GETARG_INT64(11) < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("alert_threshold must be positive")));
	(void) dlq_check_interval(fcinfo, 12, "alert_cooldown", true, DLQ_MAX_DELAY_YEARS);
	return queue;
}

/* The two plans of dlq_configure, prepared together once per backend. */
static void
queue_configure_prepare(void)
{
	Oid			types[CONFIGURE_NPARAMS] = {TEXTOID, INT4OID, INTERVALOID, INTERVALOID,
		REGCLASSOID, TEXTOID, BOOLOID, BOOLOID, INTERVALOID, FLOAT8OID, INTERVALOID,
	INT8OID, INTERVALOID, OIDOID};

	if (configure_plan != NULL)
		return;
	configure_plan = dlq_prepare_kept(
									  "UPDATE dlq.queues SET"
									  " max_attempts = coalesce($2, max_attempts),"
									  " retention = coalesce($3, retention),"
									  " resolved_retention = coalesce($4, resolved_retention),"
									  " replay_target = CASE WHEN $5 IS NULL THEN replay_target"
									  "  WHEN $5 = 0 THEN NULL ELSE $5 END,"
									  " channel = coalesce($6, channel),"
									  " require_listener = coalesce($7, require_listener),"
									  " auto_retry = coalesce($8, auto_retry),"
									  " retry_role = CASE WHEN $8 THEN $14::regrole"
									  "  WHEN NOT $8 THEN NULL"
									  "  WHEN (CASE WHEN $5 = 0 THEN NULL ELSE $5 END)"
									  "   IS DISTINCT FROM replay_target AND $5 IS NOT NULL THEN NULL"
									  "  ELSE retry_role END,"
									  " retry_base = coalesce($9, retry_base),"
									  " retry_factor = coalesce($10, retry_factor),"
									  " retry_max = coalesce($11, retry_max),"
									  " alert_threshold = coalesce($12, alert_threshold),"
									  " alert_cooldown = coalesce($13, alert_cooldown)"
									  " WHERE queue = $1 RETURNING *",
									  CONFIGURE_NPARAMS, types);
	configure_detail_plan = dlq_prepare_kept(
											 "SELECT jsonb_strip_nulls(jsonb_build_object("
											 " 'max_attempts', $2, 'retention', $3, 'resolved_retention', $4,"
											 " 'replay_target', CASE WHEN $5 = 0 THEN 'none' ELSE $5::text END,"
											 " 'channel', $6, 'require_listener', $7, 'auto_retry', $8,"
											 " 'retry_base', $9, 'retry_factor', $10, 'retry_max', $11,"
											 " 'alert_threshold', $12, 'alert_cooldown', $13,"
											 " 'retry_role', CASE WHEN $8 THEN $14::regrole::text END))"
											 " WHERE $1 IS NOT NULL",
											 CONFIGURE_NPARAMS, types);
}

PG_FUNCTION_INFO_V1(dlq_configure);

/*
 * dlq_configure(queue, max_attempts, retention, resolved_retention,
 *				 replay_target, channel, require_listener, auto_retry,
 *				 retry_base, retry_factor, retry_max, alert_threshold,
 *				 alert_cooldown) returns dlq.queues
 *
 * Change the named settings of a queue (NULL leaves one as it is), creating
 * the queue with defaults first if it is new.  replay_target => 0 clears
 * the replay target.  max_attempts applies to messages stored afterwards.
 *
 * Binding a replay target requires owning the table, and never a catalog or
 * a dlq table.  auto_retry => true records the caller as the queue's
 * retry_role, as which the worker runs the automatic retries; false clears
 * it, and so does binding another replay target without auto_retry => true
 * (the role agreed to write into the old table, not into the new one).
 */
Datum
dlq_configure(PG_FUNCTION_ARGS)
{
	char	   *queue;
	Datum		values[CONFIGURE_NPARAMS];
	char		nulls[CONFIGURE_NPARAMS];
	DlqOwnerContext owner;
	TupleDesc	tupdesc;
	Datum		result;
	Jsonb	   *detail;
	bool		isnull;

	queue = queue_check_configure_args(fcinfo);

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	for (int i = 0; i < CONFIGURE_NARGS; i++)
	{
		nulls[i] = PG_ARGISNULL(i) ? 'n' : ' ';
		values[i] = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
	}
	values[0] = CStringGetTextDatum(queue);

	/* retry_role is a column of 1.1 */
	dlq_require_current_schema();
	dlq_become_owner(&owner);
	values[CONFIGURE_NARGS] = ObjectIdGetDatum(owner.caller);
	nulls[CONFIGURE_NARGS] = ' ';
	SPI_connect();
	queue_configure_prepare();
	dlq_ensure_queue(queue, owner.caller);
	if (dlq_execute_kept(configure_detail_plan, values, nulls, true, 1, SPI_OK_SELECT) != 1)
		elog(ERROR, "could not describe the settings");
	detail = DatumGetJsonbP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (dlq_execute_kept(configure_plan, values, nulls, false, 0, SPI_OK_UPDATE_RETURNING) != 1)
		elog(ERROR, "could not configure queue \"%s\"", queue);
	if (SPI_tuptable->tupdesc->natts != tupdesc->natts)
		elog(ERROR, "dlq_configure's result type does not match dlq.queues");
	result = PointerGetDatum(SPI_returntuple(SPI_tuptable->vals[0], tupdesc));
	dlq_audit("configured", GetUserNameFromId(owner.caller, false), queue,
			  dlq_new_request_id(), true, 0, NULL, 0, detail);
	SPI_finish();
	dlq_restore_caller(&owner);

	PG_RETURN_DATUM(result);
}

/* Set a queue's paused flag; raise 42704 for an unknown queue. */
static void
queue_set_paused(FunctionCallInfo fcinfo, bool paused)
{
	char	   *queue = dlq_check_name("queue name",
									   PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0), false);
	DlqOwnerContext owner;
	Datum		values[2];

	dlq_become_owner(&owner);
	SPI_connect();
	if (pause_plan == NULL)
	{
		Oid			types[2] = {TEXTOID, BOOLOID};

		pause_plan = dlq_prepare_kept("UPDATE dlq.queues SET paused = $2 WHERE queue = $1",
									  2, types);
	}
	values[0] = CStringGetTextDatum(queue);
	values[1] = BoolGetDatum(paused);
	dlq_execute_kept(pause_plan, values, NULL, false, 0, SPI_OK_UPDATE);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("queue \"%s\" does not exist", queue)));
	dlq_audit(paused ? "paused" : "resumed", GetUserNameFromId(owner.caller, false),
			  queue, dlq_new_request_id(), true, 0, NULL, 0, NULL);
	SPI_finish();
	dlq_restore_caller(&owner);
}

PG_FUNCTION_INFO_V1(dlq_pause);

/*
 * dlq_pause(queue): replays of the queue are refused with 55000 until
 * dlq_resume.  Storing, claiming and acknowledging go on.
 */
Datum
dlq_pause(PG_FUNCTION_ARGS)
{
	queue_set_paused(fcinfo, true);
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(dlq_resume);

Datum
dlq_resume(PG_FUNCTION_ARGS)
{
	queue_set_paused(fcinfo, false);
	PG_RETURN_VOID();
}
