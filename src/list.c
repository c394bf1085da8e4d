/*-------------------------------------------------------------------------
 *
 * list.c
 *	  dlq_list, dlq_list_page and dlq_get: non-destructive reading of
 *	  messages with keyset cursors.
 *
 *	  A page is "message_id after the cursor, in id order, LIMIT n" under
 *	  filters.  The equality filters queue, status and component or sqlstate
 *	  are the leading columns of an index whose last column is message_id
 *	  (see dlq--1.0--1.1.sql, "Storage" and "list filters"), so a page is a
 *	  bounded index range scan whether it is the first page or the last of a
 *	  million messages.  since and until become a range of message_id within
 *	  that index (list_time_bounds), error_class and the exact stored_at
 *	  range are filters on top.  Each combination gets its own plan, built
 *	  from fixed SQL fragments, prepared once per backend; user input only
 *	  ever travels as parameters.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "datatype/timestamp.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "dlq.h"
#include "version.h"

#define DLQ_MAX_BATCH 1000

/*
 * How long a transaction may run before it stores a message and still have
 * that message found by since and until (see list_time_bounds): one hour.
 */
#define LIST_TIME_SLACK_USECS	((int64) 3600 * USECS_PER_SEC)

/* Which filters a page has: the bits index the plan cache. */
#define LIST_QUEUE		0x001
#define LIST_STATUS		0x002
#define LIST_COMPONENT	0x004
#define LIST_SQLSTATE	0x008
#define LIST_DESC		0x010
#define LIST_JSON		0x020
#define LIST_ERRCLASS	0x040
#define LIST_SINCE		0x080
#define LIST_UNTIL		0x100
#define LIST_SCHEMA_1_0 0x200	/* the database is still at 1.0 */
#define LIST_NPLANS		0x400

/*
 * Parameters of a page's statement: $1 queue, $2 the exclusive lower bound
 * of message_id, $3 batch_size, $4 status, $5 component, $6 sqlstate, $7 1
 * when the page looks one row ahead, $8 the exclusive upper bound of
 * message_id, $9 error_class, $10 since, $11 until.
 */
#define LIST_NPARAMS 11
#define LIST_P_QUEUE		0
#define LIST_P_LOWER		1
#define LIST_P_BATCH		2
#define LIST_P_STATUS		3
#define LIST_P_COMPONENT	4
#define LIST_P_SQLSTATE		5
#define LIST_P_EXTRA		6
#define LIST_P_UPPER		7
#define LIST_P_ERRCLASS		8
#define LIST_P_SINCE		9
#define LIST_P_UNTIL		10

typedef struct ListArgs
{
	int			flags;
	Datum		values[LIST_NPARAMS];
	char		nulls[LIST_NPARAMS];
	int			batch_size;
	bool		has_cursor;
	int64		cursor;
	char	   *queue;
	char	   *component;
	TimestampTz since;
	TimestampTz until;
} ListArgs;

static SPIPlanPtr list_plans[LIST_NPLANS];
static SPIPlanPtr get_plan = NULL;
static SPIPlanPtr components_plan = NULL;
static SPIPlanPtr probe_plans[3];

/* Set a parameter of the page's statement. */
static void
list_set(ListArgs *a, int param, Datum value)
{
	a->values[param] = value;
	a->nulls[param] = ' ';
}

/*
 * Validate a short keyword argument against its allowed values; NULL is
 * 22004.  The value is quoted in the error only when it is short, so that
 * a huge argument does not make a huge error.
 */
static const char *
list_check_keyword(const char *what, text *value, const char *const *allowed,
				   int nallowed, const char *hint)
{
	char	   *s;

	if (value == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
	if (VARSIZE_ANY_EXHDR(value) <= DLQ_MAX_NAME_BYTES)
	{
		s = text_to_cstring(value);
		for (int i = 0; i < nallowed; i++)
			if (strcmp(s, allowed[i]) == 0)
				return allowed[i];
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid %s \"%s\"", what, s),
				 errhint("%s", hint)));
	}
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid %s", what),
			 errdetail("It is %zu bytes long.", VARSIZE_ANY_EXHDR(value)),
			 errhint("%s", hint)));
	return NULL;				/* keep compiler quiet */
}

/*
 * Read and validate the arguments shared by dlq_list and dlq_list_page:
 * (queue, cursor, batch_size, status, component, sqlstate, newest_first,
 * error_class, since, until).  A 1.0 schema declares only the first seven.
 * Every argument is checked before anything is read.
 */
static void
list_parse_args(FunctionCallInfo fcinfo, ListArgs *a)
{
	static const char *const classes[] = {"transient", "permanent"};
	const char *status;
	const char *sqlstate;
	int			nargs = PG_NARGS();

	memset(a, 0, sizeof(*a));
	memset(a->nulls, 'n', sizeof(a->nulls));
	if (!dlq_schema_current())
		a->flags |= LIST_SCHEMA_1_0;

	a->queue = dlq_check_name("queue name", PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0), true);
	if (a->queue)
	{
		a->flags |= LIST_QUEUE;
		list_set(a, LIST_P_QUEUE, CStringGetTextDatum(a->queue));
	}

	if (!PG_ARGISNULL(1))
	{
		a->cursor = PG_GETARG_INT64(1);
		a->has_cursor = true;
		if (a->cursor < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("cursor must not be negative"),
					 errhint("Pass the next_cursor of the previous page, or NULL for the first page.")));
	}

	dlq_check_not_null(fcinfo, 2, "batch_size");
	a->batch_size = PG_GETARG_INT32(2);
	if (a->batch_size < 1 || a->batch_size > DLQ_MAX_BATCH)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("batch_size must be between 1 and %d", DLQ_MAX_BATCH),
				 errdetail("It is %d.", a->batch_size)));

	status = dlq_check_status(PG_ARGISNULL(3) ? NULL : PG_GETARG_TEXT_PP(3), true);
	if (strcmp(status, "any") != 0)
	{
		a->flags |= LIST_STATUS;
		list_set(a, LIST_P_STATUS, CStringGetTextDatum(status));
	}

	a->component = dlq_check_name("component", PG_ARGISNULL(4) ? NULL : PG_GETARG_TEXT_PP(4), true);
	if (a->component)
	{
		a->flags |= LIST_COMPONENT;
		list_set(a, LIST_P_COMPONENT, CStringGetTextDatum(a->component));
	}

	sqlstate = dlq_check_sqlstate(PG_ARGISNULL(5) ? NULL : PG_GETARG_TEXT_PP(5));
	if (sqlstate)
	{
		a->flags |= LIST_SQLSTATE;
		list_set(a, LIST_P_SQLSTATE, CStringGetTextDatum(sqlstate));
	}

	dlq_check_not_null(fcinfo, 6, "newest_first");
	if (PG_GETARG_BOOL(6))
		a->flags |= LIST_DESC;

	if (nargs > 7 && !PG_ARGISNULL(7))
	{
		const char *class = list_check_keyword("error_class", PG_GETARG_TEXT_PP(7),
											   classes, lengthof(classes),
											   "Use transient or permanent.");

		a->flags |= LIST_ERRCLASS;
		list_set(a, LIST_P_ERRCLASS, CStringGetTextDatum(class));
	}
	if (nargs > 8 && !PG_ARGISNULL(8))
	{
		a->since = PG_GETARG_TIMESTAMPTZ(8);
		a->flags |= LIST_SINCE;
		list_set(a, LIST_P_SINCE, TimestampTzGetDatum(a->since));
	}
	if (nargs > 9 && !PG_ARGISNULL(9))
	{
		a->until = PG_GETARG_TIMESTAMPTZ(9);
		a->flags |= LIST_UNTIL;
		list_set(a, LIST_P_UNTIL, TimestampTzGetDatum(a->until));
	}
	if ((a->flags & LIST_SINCE) && (a->flags & LIST_UNTIL) && a->since >= a->until)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("since must be earlier than until"),
				 errdetail("since is %s and until is %s.",
						   pstrdup(timestamptz_to_str(a->since)),
						   pstrdup(timestamptz_to_str(a->until)))));

	/* Only the 1.1 schema has the archived state. */
	if (strcmp(status, "archived") == 0)
		dlq_require_current_schema();
}

/*
 * When the queue is given and its list of components is set, the component
 * asked for must be on it (DESIGN 7.2), as dlq_store requires.  A queue
 * that does not exist has no list: its page is empty.  Runs as the owner,
 * inside SPI.
 */
static void
list_check_component(ListArgs *a)
{
	Datum		values[2];
	bool		isnull;

	if (!(a->flags & LIST_QUEUE) || !(a->flags & LIST_COMPONENT) ||
		(a->flags & LIST_SCHEMA_1_0))
		return;
	if (components_plan == NULL)
	{
		Oid			types[2] = {TEXTOID, TEXTOID};

		components_plan = dlq_prepare_kept("SELECT coalesce($2 = ANY (q.components), false)"
										   " FROM dlq.queues q"
										   " WHERE q.queue = $1 AND q.components IS NOT NULL",
										   2, types);
	}
	values[0] = CStringGetTextDatum(a->queue);
	values[1] = CStringGetTextDatum(a->component);
	dlq_execute_kept(components_plan, values, NULL, true, 1, SPI_OK_SELECT);
	if (SPI_processed == 1 &&
		!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("component \"%s\" is not one of queue \"%s\"'s components",
						a->component, a->queue),
				 errhint("An operator lists the components a queue accepts with dlq_configure(queue, components => ...); an empty array accepts any.")));
}

/*
 * One probe of dlq.messages by message_id: which = 0, the first message
 * with an id at or after id; 1, the first message; 2, the last.  Returns
 * false when there is none, else its id and stored_at.  Each probe is a
 * descent of the primary key of every partition.
 */
static bool
list_probe(int which, int64 id, int64 *found_id, TimestampTz *found_at)
{
	static const char *const sql[] = {
		"SELECT m.message_id, m.stored_at FROM dlq.messages m"
		" WHERE m.message_id >= $1 ORDER BY m.message_id LIMIT 1",
		"SELECT m.message_id, m.stored_at FROM dlq.messages m"
		" ORDER BY m.message_id LIMIT 1",
		"SELECT m.message_id, m.stored_at FROM dlq.messages m"
		" ORDER BY m.message_id DESC LIMIT 1"
	};
	Oid			types[1] = {INT8OID};
	Datum		arg[1];
	bool		isnull;

	if (probe_plans[which] == NULL)
		probe_plans[which] = dlq_prepare_kept(sql[which], which == 0 ? 1 : 0, types);
	arg[0] = Int64GetDatum(id);
	dlq_execute_kept(probe_plans[which], arg, NULL, true, 1, SPI_OK_SELECT);
	if (SPI_processed == 0)
		return false;
	*found_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	*found_at = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	return true;
}

/*
 * Two message ids around the time t: *below, a message stored before t (0
 * when none was found), and *above, a message stored at or after t
 * (PG_INT64_MAX when none was found), by a binary search over the primary
 * key that reads stored_at at each probe: at most about 64 probes, and
 * log2 of the span of ids in use in practice.  stored_at is not monotonic
 * in message_id, so the search does not promise the closest pair, only
 * that each bound is a real message on its side of t.
 */
static void
list_time_boundary(TimestampTz t, int64 first_id, TimestampTz first_at,
				   int64 last_id, TimestampTz last_at, int64 *below, int64 *above)
{
	int64		lo;
	int64		hi;

	*below = 0;
	*above = PG_INT64_MAX;
	if (first_at >= t)
	{
		*above = first_id;
		return;
	}
	*below = first_id;
	if (last_at < t)
	{
		*below = last_id;
		return;
	}
	*above = last_id;

	/* Messages with ids in (lo, hi) are yet to be looked at. */
	lo = first_id;
	hi = last_id;
	while (hi - lo > 1)
	{
		int64		mid = lo + (hi - lo) / 2;
		int64		id;
		TimestampTz at;

		CHECK_FOR_INTERRUPTS();
		if (!list_probe(0, mid, &id, &at) || id >= hi)
			hi = mid;			/* none in [mid, hi) */
		else if (at < t)
			lo = *below = id;
		else
		{
			*above = id;
			hi = mid;
		}
	}
}

/* t moved by delta microseconds, saturating at the ends of the range. */
static TimestampTz
list_time_shift(TimestampTz t, int64 delta)
{
	if (TIMESTAMP_NOT_FINITE(t))
		return t;
	if (delta < 0 && t < MIN_TIMESTAMP - delta)
		return DT_NOBEGIN;
	if (delta > 0 && t > END_TIMESTAMP - delta)
		return DT_NOEND;
	return t + delta;
}

/*
 * since and until as a range of message_id, so that a page with them
 * stays a bounded range of its index; the exact stored_at predicate is
 * applied on top.  message_id and stored_at both come at the INSERT, but
 * stored_at is the start of the storing transaction (now()), so ids are
 * only nearly in stored_at order.  A message m stored by a transaction that
 * ran for less than the slack S (one hour) before its INSERT is found:
 *
 * - lower bound: any message p with stored_at(p) < since - S was inserted
 *   before since (a message is inserted after its transaction starts, and
 *   less than S after that), and m, with stored_at(m) >= since, was
 *   inserted after since, so after p: id(m) > id(p), the sequence giving
 *   ids in the order of the INSERTs (it has no cache).
 * - upper bound: any message q with stored_at(q) >= until + S was inserted
 *   after until + S, and m, with stored_at(m) < until, before until + S:
 *   id(m) < id(q).
 *
 * A message stored more than an hour after its transaction began (say a
 * capture trigger late in a COPY running for hours) may fall outside the
 * range and be missed near since or until.  The cost of the slack is
 * reading up to an hour's worth of the page's index range that the
 * stored_at filter then drops, at the first page after since and at the
 * last page before until; an hour is far longer than a transaction storing
 * messages usually runs, and short enough that a page stays quick.
 */
static void
list_time_bounds(ListArgs *a, int64 *lower, int64 *upper)
{
	int64		first_id;
	int64		last_id;
	int64		unused;
	TimestampTz first_at;
	TimestampTz last_at;

	*lower = 0;
	*upper = PG_INT64_MAX;
	if (!(a->flags & (LIST_SINCE | LIST_UNTIL)))
		return;
	if (!list_probe(1, 0, &first_id, &first_at) ||
		!list_probe(2, 0, &last_id, &last_at))
		return;
	if (a->flags & LIST_SINCE)
		list_time_boundary(list_time_shift(a->since, -LIST_TIME_SLACK_USECS),
						   first_id, first_at, last_id, last_at, lower, &unused);
	if (a->flags & LIST_UNTIL)
		list_time_boundary(list_time_shift(a->until, LIST_TIME_SLACK_USECS),
						   first_id, first_at, last_id, last_at, &unused, upper);
}

/*
 * The query of one page for a combination of filters, with status the
 * SQL of the state to list.
 *
 * The equality filters that have an index (queue, status, and component or
 * sqlstate: see dlq--1.0--1.1.sql, "Storage" and "list filters") form a
 * prefix P, and the page is
 *
 *	  P = values AND $2 < message_id AND message_id < $8
 *	  ORDER BY P, message_id
 *
 * with the first column of P written as "= ANY (ARRAY[value])".  Every
 * column of P is then an equality key of the index on (P, message_id), so
 * both ends of the message_id range are where its range scan starts and
 * stops: a page reads its own rows and no more, however many rows of the
 * same prefix lie beyond the range (the end of since/until, a short last
 * page).  The array keeps the first column out of the planner's
 * equivalence classes, so ORDER BY keeps it and only an index that leads
 * with it can deliver the order: with plain equalities the order would be
 * just message_id, which the primary key also delivers, and the planner
 * may prefer walking it and filtering (every row of other queues between
 * the cursor and the page), and keep doing so in a cached generic plan.
 * (1.0 used row comparisons for this; in PostgreSQL 15 a row comparison
 * ends a range scan only where its first column changes, so its upper
 * bound would not stop at the end of the range.)
 *
 * With both component and sqlstate, either index serves the page (the
 * columns after the first are constants to the planner, so both deliver
 * the order), whichever the planner estimates narrower, and the other
 * filter is checked on the rows of its range; without a queue,
 * component and sqlstate are plain filters over the range of the state (as
 * in 1.0); error_class and the exact stored_at range are always filters.
 * Each partition of dlq.messages has these indexes; the planner merges
 * their ranges.
 */
static void
list_page_sql(StringInfo sql, int flags, const char *status)
{
	StringInfoData prefix;
	StringInfoData order;
	bool		desc = (flags & LIST_DESC) != 0;
	bool		indexed = (flags & LIST_QUEUE) && status != NULL;
	bool		component_in_index = indexed && (flags & LIST_COMPONENT);
	bool		sqlstate_in_index = indexed && !component_in_index &&
		(flags & LIST_SQLSTATE) && !(flags & LIST_SCHEMA_1_0);

	initStringInfo(&prefix);
	initStringInfo(&order);
#define PREFIX(col, val) \
	do { \
		if (prefix.len == 0) \
			appendStringInfo(&prefix, "m.%s = ANY (ARRAY[%s]) AND ", col, val); \
		else \
			appendStringInfo(&prefix, "m.%s = %s AND ", col, val); \
		appendStringInfo(&order, "m.%s%s, ", col, desc ? " DESC" : ""); \
	} while (0)
	if (flags & LIST_QUEUE)
		PREFIX("queue", "$1");
	if (status != NULL)
		PREFIX("status", status);
	if (component_in_index)
		PREFIX("component", "$5");
	if (sqlstate_in_index)
		PREFIX("sqlstate", "$6::pg_catalog.bpchar");
#undef PREFIX

	appendStringInfo(sql, "SELECT %s FROM dlq.message m WHERE %sm.message_id > $2 AND m.message_id < $8",
					 (flags & LIST_JSON) ? "pg_catalog.to_jsonb(m), m.message_id" : "m.*",
					 prefix.data);
	if ((flags & LIST_COMPONENT) && !component_in_index)
		appendStringInfoString(sql, " AND m.component = $5");
	if ((flags & LIST_SQLSTATE) && !sqlstate_in_index)
		appendStringInfoString(sql, " AND m.sqlstate = $6::pg_catalog.bpchar");
	if (flags & LIST_ERRCLASS)
		appendStringInfoString(sql, " AND m.error_class = $9");
	if (flags & LIST_SINCE)
		appendStringInfoString(sql, " AND m.stored_at >= $10");
	if (flags & LIST_UNTIL)
		appendStringInfoString(sql, " AND m.stored_at < $11");

	appendStringInfo(sql, " ORDER BY %sm.message_id%s", order.data, desc ? " DESC" : "");
	/* $3 is batch_size; $7 is 1 when the page looks one row ahead. */
	appendStringInfoString(sql, " LIMIT $3 + $7");
}

/*
 * The plan of a page.  Without a status (status 'any') there is no index
 * on (queue, message_id): the page is merged from one page per state, each
 * a bounded range of the index with the state in its prefix, so it reads
 * at most six pages' worth of entries (five on a 1.0 schema, which has no
 * archived state).
 */
static SPIPlanPtr
list_get_plan(int flags)
{
	static const char *const states[] =
	{"pending", "replaying", "review", "resolved", "expired", "archived"};
	Oid			types[LIST_NPARAMS] = {TEXTOID, INT8OID, INT4OID, TEXTOID, TEXTOID, TEXTOID,
	INT4OID, INT8OID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID};
	StringInfoData sql;

	if (list_plans[flags] != NULL)
		return list_plans[flags];

	initStringInfo(&sql);
	if (flags & LIST_STATUS)
		list_page_sql(&sql, flags, "$4::dlq.status");
	else
	{
		int			nstates = (flags & LIST_SCHEMA_1_0) ? 5 : 6;

		appendStringInfoString(&sql, "SELECT p.* FROM (");
		for (int i = 0; i < nstates; i++)
		{
			appendStringInfoString(&sql, i > 0 ? ") UNION ALL (" : "(");
			list_page_sql(&sql, flags, psprintf("'%s'::dlq.status", states[i]));
		}
		appendStringInfo(&sql, ")) p ORDER BY p.message_id%s LIMIT $3 + $7",
						 (flags & LIST_DESC) ? " DESC" : "");
	}
	list_plans[flags] = dlq_prepare_kept(sql.data, LIST_NPARAMS, types);
	return list_plans[flags];
}

/*
 * Run the page query; extra is 1 to fetch one row more than the page.
 * Runs as the owner, inside SPI: first the components check, then the
 * message_id range of since and until, then the page.
 *
 * The plan is made with sorts, sequential and bitmap scans disabled, so that
 * the planner takes the index that delivers (P, message_id) in order even
 * when its estimates say otherwise: on a small table a sort or a scan of
 * the whole table looks as cheap, but a page
 * must stay a bounded range scan as the table grows under a cached plan.
 * The merge of a status 'any' page still sorts (at most six pages): its
 * cost then counts as disabled, far above jit_above_cost, and JIT would
 * compile the plan at every call (a second for 20 rows); so JIT is off too.
 */
static void
list_run(ListArgs *a, int extra)
{
	static const char *const disabled[] =
	{"enable_seqscan", "enable_bitmapscan", "enable_sort", "enable_incremental_sort", "jit"};
	int64		lower;
	int64		upper;
	int			nest;

	list_check_component(a);

	nest = NewGUCNestLevel();
	for (int i = 0; i < lengthof(disabled); i++)
		(void) set_config_option(disabled[i], "off", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);

	list_time_bounds(a, &lower, &upper);
	if (!(a->flags & LIST_DESC))
	{
		if (a->has_cursor && a->cursor > lower)
			lower = a->cursor;
	}
	else if (a->has_cursor && a->cursor < upper)
		upper = a->cursor;
	list_set(a, LIST_P_LOWER, Int64GetDatum(lower));
	list_set(a, LIST_P_UPPER, Int64GetDatum(upper));
	list_set(a, LIST_P_BATCH, Int32GetDatum(a->batch_size));
	list_set(a, LIST_P_EXTRA, Int32GetDatum(extra));

	dlq_execute_kept(list_get_plan(a->flags), a->values, a->nulls, true, 0, SPI_OK_SELECT);
	AtEOXact_GUC(true, nest);
}

PG_FUNCTION_INFO_V1(dlq_list);

/*
 * dlq_list(queue, cursor, batch_size, status, component, sqlstate,
 *			newest_first, error_class, since, until) returns setof dlq.message
 */
Datum
dlq_list(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ListArgs	args;
	DlqOwnerContext owner;

	list_parse_args(fcinfo, &args);
	InitMaterializedSRF(fcinfo, 0);

	dlq_become_owner(&owner);
	SPI_connect();
	list_run(&args, 0);
	if (SPI_tuptable->tupdesc->natts != rsinfo->setDesc->natts)
		elog(ERROR, "dlq.message does not match dlq.messages");
	for (uint64 i = 0; i < SPI_processed; i++)
		tuplestore_puttuple(rsinfo->setResult, SPI_tuptable->vals[i]);
	SPI_finish();
	dlq_restore_caller(&owner);

	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(dlq_list_page);

/* Push a key and a scalar value into the object being built. */
static void
list_push_pair(JsonbParseState **state, const char *key, JsonbValue *value)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	(void) pushJsonbValue(state, WJB_KEY, &k);
	(void) pushJsonbValue(state, WJB_VALUE, value);
}

/*
 * dlq_list_page(same arguments as dlq_list) returns jsonb
 *	  {"messages": [...], "next_cursor": id or null, "has_more": bool}
 *
 * has_more is exact: the query looks one row past the page.  The rows come
 * from the query as jsonb already and are pushed into the envelope as they
 * are, without a round trip through text.
 */
Datum
dlq_list_page(PG_FUNCTION_ARGS)
{
	ListArgs	args;
	DlqOwnerContext owner;
	JsonbParseState *state = NULL;
	JsonbValue	v;
	JsonbValue *result;
	Jsonb	   *page;
	uint64		n;
	bool		has_more;
	int64		last_id = 0;
	MemoryContext callcontext = CurrentMemoryContext;
	MemoryContext spicontext;

	list_parse_args(fcinfo, &args);
	args.flags |= LIST_JSON;

	dlq_become_owner(&owner);
	SPI_connect();
	list_run(&args, 1);
	n = SPI_processed;
	has_more = n > (uint64) args.batch_size;
	if (has_more)
		n = args.batch_size;

	/* Build the result in the caller's context: it outlives SPI. */
	spicontext = MemoryContextSwitchTo(callcontext);
	(void) pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	v.type = jbvString;
	v.val.string.val = "messages";
	v.val.string.len = strlen("messages");
	(void) pushJsonbValue(&state, WJB_KEY, &v);
	(void) pushJsonbValue(&state, WJB_BEGIN_ARRAY, NULL);
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		Jsonb	   *row = DatumGetJsonbP(SPI_getbinval(SPI_tuptable->vals[i],
													   SPI_tuptable->tupdesc, 1, &isnull));

		v.type = jbvBinary;
		v.val.binary.data = &row->root;
		v.val.binary.len = VARSIZE(row) - VARHDRSZ;
		(void) pushJsonbValue(&state, WJB_ELEM, &v);
		last_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
											  SPI_tuptable->tupdesc, 2, &isnull));
	}
	(void) pushJsonbValue(&state, WJB_END_ARRAY, NULL);

	if (has_more)
	{
		v.type = jbvNumeric;
		v.val.numeric = DatumGetNumeric(DirectFunctionCall1(int8_numeric,
															Int64GetDatum(last_id)));
	}
	else
		v.type = jbvNull;
	list_push_pair(&state, "next_cursor", &v);
	v.type = jbvBool;
	v.val.boolean = has_more;
	list_push_pair(&state, "has_more", &v);
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	/* Flatten before SPI_finish: the values still point into SPI's rows. */
	page = JsonbValueToJsonb(result);
	MemoryContextSwitchTo(spicontext);

	SPI_finish();
	dlq_restore_caller(&owner);

	PG_RETURN_JSONB_P(page);
}

PG_FUNCTION_INFO_V1(dlq_get);

/*
 * dlq_get(message_id) returns dlq.message; 02000 when there is none.
 */
Datum
dlq_get(PG_FUNCTION_ARGS)
{
	int64		id;
	DlqOwnerContext owner;
	TupleDesc	tupdesc;
	Datum	   *values;
	bool	   *nulls;
	HeapTuple	result;
	MemoryContext callcontext = CurrentMemoryContext;
	Datum		arg[1];

	dlq_check_not_null(fcinfo, 0, "message_id");
	id = PG_GETARG_INT64(0);

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);
	values = palloc(sizeof(Datum) * tupdesc->natts);
	nulls = palloc(sizeof(bool) * tupdesc->natts);

	dlq_become_owner(&owner);
	SPI_connect();
	if (get_plan == NULL)
	{
		Oid			types[1] = {INT8OID};

		get_plan = dlq_prepare_kept("SELECT m.* FROM dlq.message m WHERE m.message_id = $1",
									1, types);
	}
	arg[0] = Int64GetDatum(id);
	dlq_execute_kept(get_plan, arg, NULL, true, 1, SPI_OK_SELECT);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA),
				 errmsg("message " INT64_FORMAT " does not exist", id),
				 errhint("It may have been discarded, or purged after its retention.")));

	/* Copy the row out of SPI memory as a dlq.message. */
	MemoryContextSwitchTo(callcontext);
	heap_deform_tuple(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, values, nulls);
	result = heap_form_tuple(tupdesc, values, nulls);
	SPI_finish();
	dlq_restore_caller(&owner);

	PG_RETURN_DATUM(HeapTupleGetDatum(result));
}
