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

/*
 * dlq_configure's arguments: 1.0 had 13, 1.1 adds eight at the end.  The
 * plans take all of them (NULL for those a 1.0 signature lacks), then the
 * caller, for retry_role, and the number of reclassified messages, for the
 * audit event.
 */
#define CONFIGURE_NARGS_1_0 13
#define CONFIGURE_NARGS 21
#define CONFIGURE_NPARAMS (CONFIGURE_NARGS + 2)

/* The arguments 1.1 added (dlq--1.0--1.1.sql, "Operator workflow: queue settings"). */
#define ARG_RETRY_ON 13
#define ARG_TRANSIENT 14
#define ARG_PERMANENT 15
#define ARG_ARCHIVE_RETENTION 16
#define ARG_MAX_MESSAGES 17
#define ARG_COMPONENTS 18
/* dlq--1.0--1.1.sql, "Processing (issue 14): queue settings" */
#define ARG_REPLAY_HANDLER 19
#define ARG_RETRY_STOP_RATIO 20

/* Most entries of transient_sqlstates or permanent_sqlstates, and of components. */
#define MAX_SQLSTATE_OVERRIDES 100
#define MAX_COMPONENTS 1000

static SPIPlanPtr configure_plan = NULL;
static SPIPlanPtr configure_detail_plan = NULL;
static SPIPlanPtr configure_lock_plan = NULL;
static SPIPlanPtr reclassify_plan = NULL;
static SPIPlanPtr reschedule_plan = NULL;
static SPIPlanPtr pause_plan = NULL;
static SPIPlanPtr queue_exists_plan = NULL;
static SPIPlanPtr kind_plan = NULL;

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

/* The overrides of the built-in error classes given to dlq_configure. */
typedef struct QueueOverrides
{
	bool		given[2];		/* transient_sqlstates, permanent_sqlstates */
	int			n[2];
	char	  **codes[2];
} QueueOverrides;

static const char *const override_names[2] = {"transient_sqlstates", "permanent_sqlstates"};

/*
 * The elements of a text[] argument as C strings: one-dimensional, no NULL
 * element (22004), at most max of them (54000).  Empty is allowed: it clears
 * the setting.
 */
static Datum *
queue_text_array(ArrayType *array, const char *what, int max, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	int			count;

	if (ARR_NDIM(array) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a one-dimensional array", what)));
	count = ArrayGetNItems(ARR_NDIM(array), ARR_DIMS(array));
	if (count > max)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s has too many entries", what),
				 errdetail("It has %d; the limit is %d.", count, max)));
	if (array_contains_nulls(array))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not contain nulls", what)));
	deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &count);
	*n = count;
	return elems;
}

static int
queue_cmp_strings(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/* Raise 22023 if a sorted list of n strings holds one twice. */
static void
queue_check_unique(char **sorted, int n, const char *what)
{
	for (int i = 1; i < n; i++)
		if (strcmp(sorted[i - 1], sorted[i]) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s must not contain duplicates", what),
					 errdetail("\"%s\" appears more than once.", sorted[i])));
}

/*
 * transient_sqlstates or permanent_sqlstates (argument argno): each entry a
 * SQLSTATE of five characters or a class of two, digits and upper-case
 * ASCII letters, each once.  The entry is not echoed: it may be anything.
 */
static void
queue_check_overrides(FunctionCallInfo fcinfo, int argno, int which, QueueOverrides *o)
{
	const char *what = override_names[which];
	Datum	   *elems;
	char	  **codes;
	int			n;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return;
	elems = queue_text_array(PG_GETARG_ARRAYTYPE_P(argno), what, MAX_SQLSTATE_OVERRIDES, &n);
	codes = palloc(sizeof(char *) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		size_t		len;

		codes[i] = text_to_cstring(DatumGetTextPP(elems[i]));
		len = strlen(codes[i]);

		if ((len != 2 && len != 5) ||
			strspn(codes[i], "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") != len)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("entry %d of %s is not a SQLSTATE or a SQLSTATE class", i + 1, what),
					 errdetail("Each entry is five characters (a SQLSTATE, such as 23503) or two (a class, such as 23), each a digit or an upper-case ASCII letter.")));
	}
	qsort(codes, n, sizeof(char *), queue_cmp_strings);
	queue_check_unique(codes, n, what);
	o->given[which] = true;
	o->n[which] = n;
	o->codes[which] = codes;
}

/* Raise 22023 if a code is in both lists (each sorted). */
static void
queue_check_overlap(QueueOverrides *o)
{
	for (int i = 0; i < o->n[0]; i++)
		if (bsearch(&o->codes[0][i], o->codes[1], o->n[1], sizeof(char *),
					queue_cmp_strings) != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("\"%s\" is in both transient_sqlstates and permanent_sqlstates",
							o->codes[0][i]),
					 errhint("Remove it from one of them; an empty array clears a list.")));
}

/* components: valid names (dlq_check_name), at most MAX_COMPONENTS, each once. */
static void
queue_check_components(FunctionCallInfo fcinfo)
{
	Datum	   *elems;
	char	  **names;
	int			n;

	if (PG_NARGS() <= ARG_COMPONENTS || PG_ARGISNULL(ARG_COMPONENTS))
		return;
	elems = queue_text_array(PG_GETARG_ARRAYTYPE_P(ARG_COMPONENTS), "components",
							 MAX_COMPONENTS, &n);
	names = palloc(sizeof(char *) * Max(n, 1));
	for (int i = 0; i < n; i++)
		names[i] = dlq_check_name("component", DatumGetTextPP(elems[i]), false);
	qsort(names, n, sizeof(char *), queue_cmp_strings);
	queue_check_unique(names, n, "components");
}

/* The settings 1.1 added to dlq_configure; nothing when called with 1.0's 13. */
static void
queue_check_new_args(FunctionCallInfo fcinfo, QueueOverrides *o)
{
	if (PG_NARGS() < CONFIGURE_NARGS)
		return;
	if (!PG_ARGISNULL(ARG_RETRY_ON))
	{
		char	   *retry_on = text_to_cstring(PG_GETARG_TEXT_PP(ARG_RETRY_ON));

		if (strcmp(retry_on, "transient") != 0 && strcmp(retry_on, "all") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("retry_on must be \"transient\" or \"all\"")));
	}
	queue_check_overrides(fcinfo, ARG_TRANSIENT, 0, o);
	queue_check_overrides(fcinfo, ARG_PERMANENT, 1, o);
	if (o->given[0] && o->given[1])
		queue_check_overlap(o);
	(void) dlq_check_interval(fcinfo, ARG_ARCHIVE_RETENTION, "archive_retention", true,
							  DLQ_MAX_AGE_YEARS);
	if (!PG_ARGISNULL(ARG_MAX_MESSAGES) && PG_GETARG_INT64(ARG_MAX_MESSAGES) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_messages must not be negative"),
				 errhint("Pass 0 to remove the limit.")));
	queue_check_components(fcinfo);
	/* Replays call it on behalf of whoever replays: only its owner binds it. */
	if (!PG_ARGISNULL(ARG_REPLAY_HANDLER) && PG_GETARG_OID(ARG_REPLAY_HANDLER) != InvalidOid)
		dlq_check_bindable_function(PG_GETARG_OID(ARG_REPLAY_HANDLER), GetUserId());
	if (!PG_ARGISNULL(ARG_RETRY_STOP_RATIO))
	{
		float8		ratio = PG_GETARG_FLOAT8(ARG_RETRY_STOP_RATIO);

		if (isnan(ratio) || ratio < 0 || ratio > 1)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("retry_stop_ratio must be between 0 and 1"),
					 errhint("Pass 0 to remove it.")));
	}
}

/*
 * Validate the arguments of dlq_configure, each with SQLSTATE 22023 (22004
 * for a NULL queue name) before anything is written; returns the queue.
 */
static char *
queue_check_configure_args(FunctionCallInfo fcinfo, QueueOverrides *o)
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
	queue_check_new_args(fcinfo, o);
	return queue;
}

/*
 * The plans of dlq_configure, prepared together once per backend.  Every
 * one takes the same CONFIGURE_NPARAMS parameters: the arguments, the
 * caller ($22) and the number of reclassified messages ($23).  An empty
 * array clears transient_sqlstates, permanent_sqlstates and components,
 * max_messages => 0 clears max_messages.
 */
static void
queue_configure_prepare(void)
{
	Oid			types[CONFIGURE_NPARAMS] = {TEXTOID, INT4OID, INTERVALOID, INTERVALOID,
		REGCLASSOID, TEXTOID, BOOLOID, BOOLOID, INTERVALOID, FLOAT8OID, INTERVALOID,
		INT8OID, INTERVALOID, TEXTOID, TEXTARRAYOID, TEXTARRAYOID, INTERVALOID, INT8OID,
	TEXTARRAYOID, REGPROCEDUREOID, FLOAT8OID, OIDOID, INT8OID};

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
									  " retry_role = CASE WHEN $8 THEN $22::regrole"
									  "  WHEN NOT $8 THEN NULL"
									  "  WHEN (CASE WHEN $5 = 0 THEN NULL ELSE $5 END)"
									  "   IS DISTINCT FROM replay_target AND $5 IS NOT NULL THEN NULL"
									  "  WHEN (CASE WHEN $20 = 0 THEN NULL ELSE $20 END)"
									  "   IS DISTINCT FROM replay_handler AND $20 IS NOT NULL THEN NULL"
									  "  ELSE retry_role END,"
									  " retry_base = coalesce($9, retry_base),"
									  " retry_factor = coalesce($10, retry_factor),"
									  " retry_max = coalesce($11, retry_max),"
									  " alert_threshold = coalesce($12, alert_threshold),"
									  " alert_cooldown = coalesce($13, alert_cooldown),"
									  " retry_on = coalesce($14, retry_on),"
									  " transient_sqlstates = CASE WHEN $15 IS NULL THEN transient_sqlstates"
									  "  WHEN cardinality($15) > 0 THEN $15 END,"
									  " permanent_sqlstates = CASE WHEN $16 IS NULL THEN permanent_sqlstates"
									  "  WHEN cardinality($16) > 0 THEN $16 END,"
									  " archive_retention = coalesce($17, archive_retention),"
									  " max_messages = CASE WHEN $18 IS NULL THEN max_messages"
									  "  WHEN $18 > 0 THEN $18 END,"
									  " components = CASE WHEN $19 IS NULL THEN components"
									  "  WHEN cardinality($19) > 0 THEN $19 END,"
									  " replay_handler = CASE WHEN $20 IS NULL THEN replay_handler"
									  "  WHEN $20 = 0 THEN NULL ELSE $20 END,"
									  " replay_handler_owner = CASE WHEN $20 IS NULL THEN replay_handler_owner"
									  "  WHEN $20 = 0 THEN NULL ELSE (SELECT p.proowner::pg_catalog.regrole"
									  "   FROM pg_catalog.pg_proc p WHERE p.oid = $20) END,"
									  " retry_stop_ratio = CASE WHEN $21 IS NULL THEN retry_stop_ratio"
									  "  WHEN $21 > 0 THEN $21 END"
									  " WHERE queue = $1 RETURNING *",
									  CONFIGURE_NPARAMS, types);
	configure_detail_plan = dlq_prepare_kept(
											 "SELECT jsonb_strip_nulls(jsonb_build_object("
											 " 'max_attempts', $2, 'retention', $3, 'resolved_retention', $4,"
											 " 'replay_target', CASE WHEN $5 = 0 THEN 'none' ELSE $5::text END,"
											 " 'channel', $6, 'require_listener', $7, 'auto_retry', $8,"
											 " 'retry_base', $9, 'retry_factor', $10, 'retry_max', $11,"
											 " 'alert_threshold', $12, 'alert_cooldown', $13,"
											 " 'retry_role', CASE WHEN $8 THEN $22::regrole::text END,"
											 " 'retry_on', $14, 'transient_sqlstates', $15,"
											 " 'permanent_sqlstates', $16, 'archive_retention', $17,"
											 " 'max_messages', CASE WHEN $18 = 0 THEN to_jsonb('none'::text)"
											 "  ELSE to_jsonb($18) END,"
											 " 'components', $19, 'reclassified', $23,"
											 " 'replay_handler', CASE WHEN $20 = 0 THEN 'none' ELSE $20::text END,"
											 " 'retry_stop_ratio', CASE WHEN $21 = 0 THEN to_jsonb('none'::text)"
											 "  ELSE to_jsonb($21) END))"
											 " WHERE $1 IS NOT NULL",
											 CONFIGURE_NPARAMS, types);
	/* The other list, when one is given: the two must not share a code. */
	configure_lock_plan = dlq_prepare_kept(
										   "SELECT transient_sqlstates, permanent_sqlstates"
										   " FROM dlq.queues WHERE queue = $1 FOR UPDATE",
										   1, types);

	/*
	 * New overrides or retry_on: the open messages' error_class follows,
	 * and so does the schedule of the pending ones of an auto_retry queue
	 * (a message that may now be retried gets its next retry, one that may
	 * not loses it).
	 */
	reclassify_plan = dlq_prepare_kept(
									   "UPDATE dlq.messages m"
									   " SET error_class = dlq.sqlstate_class(m.sqlstate,"
									   "  q.transient_sqlstates, q.permanent_sqlstates)"
									   " FROM dlq.queues q"
									   " WHERE q.queue = $1 AND m.slot = 0 AND m.queue = $1"
									   "  AND m.status IN ('pending', 'replaying', 'review')"
									   "  AND m.error_class <> dlq.sqlstate_class(m.sqlstate,"
									   "   q.transient_sqlstates, q.permanent_sqlstates)",
									   1, types);
	reschedule_plan = dlq_prepare_kept(
									   "UPDATE dlq.messages m"
									   " SET next_retry_at = CASE WHEN q.retry_on = 'all'"
									   "  OR m.error_class = 'transient'"
									   "  THEN now() + dlq.retry_delay(q, m.attempts + 1) END"
									   " FROM dlq.queues q"
									   " WHERE q.queue = $1 AND q.auto_retry"
									   "  AND m.slot = 0 AND m.queue = $1 AND m.status = 'pending'"
									   "  AND m.attempts < m.max_attempts"
									   "  AND (m.next_retry_at IS NULL)"
									   "   = (q.retry_on = 'all' OR m.error_class = 'transient')",
									   1, types);
}

/*
 * With only one of transient_sqlstates and permanent_sqlstates given, the
 * queue's other list (locked, so that a concurrent call cannot add the same
 * code to it) must not share a code with it.  Inside SPI, as the owner.
 */
static void
queue_check_stored_overlap(const char *queue, QueueOverrides *o)
{
	int			other = o->given[0] ? 1 : 0;
	Datum		value = CStringGetTextDatum(queue);
	bool		isnull;
	Datum		d;

	if (o->given[0] == o->given[1])
		return;
	if (dlq_execute_kept(configure_lock_plan, &value, NULL, false, 1, SPI_OK_SELECT) != 1)
		return;
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, other + 1, &isnull);
	if (isnull)
		return;
	{
		Datum	   *elems;
		bool	   *nulls;
		int			n;

		deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT,
						  &elems, &nulls, &n);
		o->codes[other] = palloc(sizeof(char *) * Max(n, 1));
		for (int i = 0; i < n; i++)
			o->codes[other][i] = nulls[i] ? "" : TextDatumGetCString(elems[i]);
		qsort(o->codes[other], n, sizeof(char *), queue_cmp_strings);
		o->n[other] = n;
	}
	queue_check_overlap(o);
}

/*
 * Apply new overrides or retry_on to the queue's open messages; returns how
 * many changed class.  Inside SPI, as the owner, after the queue's update.
 */
static int64
queue_reclassify(const char *queue)
{
	Datum		value = CStringGetTextDatum(queue);
	int64		reclassified;

	reclassified = dlq_execute_kept(reclassify_plan, &value, NULL, false, 0, SPI_OK_UPDATE);
	dlq_execute_kept(reschedule_plan, &value, NULL, false, 0, SPI_OK_UPDATE);
	return reclassified;
}

/*
 * A queue's replays go into a table or through a handler, never both:
 * raise 22023 when the call would leave the queue (its row locked here)
 * with both.  Inside SPI, as the owner, before the update.
 */
static void
queue_check_replay_kind(const char *queue, Datum *values, const char *nulls)
{
	Datum		value = CStringGetTextDatum(queue);
	bool		target;
	bool		handler;
	bool		isnull;

	if (kind_plan == NULL)
	{
		Oid			types[1] = {TEXTOID};

		kind_plan = dlq_prepare_kept("SELECT replay_target IS NOT NULL, replay_handler IS NOT NULL"
									 " FROM dlq.queues WHERE queue = $1 FOR UPDATE",
									 1, types);
	}
	if (dlq_execute_kept(kind_plan, &value, NULL, false, 1, SPI_OK_SELECT) != 1)
		return;
	target = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	handler = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	SPI_freetuptable(SPI_tuptable);
	/* given: 0 clears, another value sets; not given: as it is */
	if (nulls[4] == ' ')
		target = DatumGetObjectId(values[4]) != InvalidOid;
	if (nulls[ARG_REPLAY_HANDLER] == ' ')
		handler = DatumGetObjectId(values[ARG_REPLAY_HANDLER]) != InvalidOid;
	if (target && handler)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("queue \"%s\" cannot have both a replay target and a replay handler", queue),
				 errhint("Clear one of them with replay_target => 0 or replay_handler => 0.")));
}

PG_FUNCTION_INFO_V1(dlq_configure);

/*
 * dlq_configure(queue, max_attempts, retention, resolved_retention,
 *				 replay_target, channel, require_listener, auto_retry,
 *				 retry_base, retry_factor, retry_max, alert_threshold,
 *				 alert_cooldown, retry_on, transient_sqlstates,
 *				 permanent_sqlstates, archive_retention, max_messages,
 *				 components, replay_handler, retry_stop_ratio) returns dlq.queues
 *
 * Change the named settings of a queue (NULL leaves one as it is), creating
 * the queue with defaults first if it is new.  replay_target => 0 clears
 * the replay target, replay_handler => 0 the handler, max_messages => 0 the
 * cap, retry_stop_ratio => 0 the early stop, an empty array the SQLSTATE
 * lists and components.  max_attempts applies to messages stored afterwards;
 * retry_on and the SQLSTATE lists also to the open messages, whose
 * error_class (and retry schedule) follow at once.  A 1.0 schema's
 * function has only the first 13 arguments.
 *
 * Binding a replay target requires owning the table, and never a catalog or
 * a dlq table; binding a replay handler owning the function, never one of
 * dlq's (dlq_check_bindable_function).  A queue has at most one of the two.
 * auto_retry => true records the caller as the queue's retry_role, as which
 * the worker runs the automatic retries; false clears it, and so does
 * binding another replay target or handler without auto_retry => true (the
 * role agreed to run the old one, not the new one).
 */
Datum
dlq_configure(PG_FUNCTION_ARGS)
{
	char	   *queue;
	QueueOverrides overrides = {{false, false}, {0, 0}, {NULL, NULL}};
	Datum		values[CONFIGURE_NPARAMS];
	char		nulls[CONFIGURE_NPARAMS];
	DlqOwnerContext owner;
	TupleDesc	tupdesc;
	Datum		result;
	Jsonb	   *detail;
	bool		isnull;
	bool		reclassify;

	if (PG_NARGS() != CONFIGURE_NARGS && PG_NARGS() != CONFIGURE_NARGS_1_0)
		elog(ERROR, "dlq_configure must have %d arguments", CONFIGURE_NARGS);
	queue = queue_check_configure_args(fcinfo, &overrides);

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	memset(values, 0, sizeof(values));
	memset(nulls, 'n', sizeof(nulls));
	for (int i = 0; i < PG_NARGS(); i++)
	{
		nulls[i] = PG_ARGISNULL(i) ? 'n' : ' ';
		values[i] = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
	}
	values[0] = CStringGetTextDatum(queue);
	reclassify = nulls[ARG_RETRY_ON] == ' ' || nulls[ARG_TRANSIENT] == ' ' ||
		nulls[ARG_PERMANENT] == ' ';

	/* retry_role and the settings of issue 13 are columns of 1.1 */
	dlq_require_current_schema();
	dlq_become_owner(&owner);
	values[CONFIGURE_NARGS] = ObjectIdGetDatum(owner.caller);
	nulls[CONFIGURE_NARGS] = ' ';
	SPI_connect();
	queue_configure_prepare();
	dlq_ensure_queue(queue, owner.caller);
	queue_check_stored_overlap(queue, &overrides);
	queue_check_replay_kind(queue, values, nulls);
	if (dlq_execute_kept(configure_plan, values, nulls, false, 0, SPI_OK_UPDATE_RETURNING) != 1)
		elog(ERROR, "could not configure queue \"%s\"", queue);
	if (SPI_tuptable->tupdesc->natts != tupdesc->natts)
		elog(ERROR, "dlq_configure's result type does not match dlq.queues");
	result = PointerGetDatum(SPI_returntuple(SPI_tuptable->vals[0], tupdesc));
	if (reclassify)
	{
		values[CONFIGURE_NARGS + 1] = Int64GetDatum(queue_reclassify(queue));
		nulls[CONFIGURE_NARGS + 1] = ' ';
	}
	if (dlq_execute_kept(configure_detail_plan, values, nulls, true, 1, SPI_OK_SELECT) != 1)
		elog(ERROR, "could not describe the settings");
	detail = DatumGetJsonbP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
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
