/*-------------------------------------------------------------------------
 *
 * list.c
 *	  dlq_list, dlq_list_page and dlq_get: non-destructive reading of
 *	  messages with keyset cursors.
 *
 *	  A page is "message_id after the cursor, in id order, LIMIT n" under
 *	  equality filters.  Every combination of filters has an index whose
 *	  leading columns are the filters and whose last column is message_id
 *	  (see dlq--1.0.sql, "Storage"), so a page is a bounded index range scan
 *	  whether it is the first page or the last of a million messages.  Each
 *	  combination gets its own plan, built from fixed SQL fragments, prepared
 *	  once per backend; user input only ever travels as parameters.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/tuplestore.h"

#include "dlq.h"

#define DLQ_MAX_BATCH 1000

/* Which filters a page has: the bits index the plan cache. */
#define LIST_QUEUE		0x01
#define LIST_STATUS		0x02
#define LIST_COMPONENT	0x04
#define LIST_SQLSTATE	0x08
#define LIST_DESC		0x10
#define LIST_JSON		0x20
#define LIST_NPLANS		0x40

#define LIST_NARGS 6

typedef struct ListArgs
{
	int			flags;
	Datum		values[LIST_NARGS];
	char		nulls[LIST_NARGS];
	int			batch_size;
} ListArgs;

static SPIPlanPtr list_plans[LIST_NPLANS];
static SPIPlanPtr get_plan = NULL;

/*
 * Read and validate the arguments shared by dlq_list and dlq_list_page:
 * (queue, cursor, batch_size, status, component, sqlstate, newest_first).
 */
static void
list_parse_args(FunctionCallInfo fcinfo, ListArgs *a)
{
	char	   *queue;
	char	   *component;
	const char *status;
	const char *sqlstate;

	memset(a, 0, sizeof(*a));
	memset(a->nulls, 'n', sizeof(a->nulls));

	queue = dlq_check_name("queue name", PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0), true);
	if (queue)
	{
		a->flags |= LIST_QUEUE;
		a->values[0] = CStringGetTextDatum(queue);
		a->nulls[0] = ' ';
	}

	if (!PG_ARGISNULL(1))
	{
		int64		cursor = PG_GETARG_INT64(1);

		if (cursor < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("cursor must not be negative"),
					 errhint("Pass the next_cursor of the previous page, or NULL for the first page.")));
		a->values[1] = Int64GetDatum(cursor);
	}
	else
		a->values[1] = Int64GetDatum(0);	/* set below for newest_first */
	a->nulls[1] = ' ';

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
		a->values[3] = CStringGetTextDatum(status);
		a->nulls[3] = ' ';
	}

	component = dlq_check_name("component", PG_ARGISNULL(4) ? NULL : PG_GETARG_TEXT_PP(4), true);
	if (component)
	{
		a->flags |= LIST_COMPONENT;
		a->values[4] = CStringGetTextDatum(component);
		a->nulls[4] = ' ';
	}

	sqlstate = dlq_check_sqlstate(PG_ARGISNULL(5) ? NULL : PG_GETARG_TEXT_PP(5));
	if (sqlstate)
	{
		a->flags |= LIST_SQLSTATE;
		a->values[5] = CStringGetTextDatum(sqlstate);
		a->nulls[5] = ' ';
	}

	dlq_check_not_null(fcinfo, 6, "newest_first");
	if (PG_GETARG_BOOL(6))
	{
		a->flags |= LIST_DESC;
		if (PG_ARGISNULL(1))
			a->values[1] = Int64GetDatum(PG_INT64_MAX);
	}
}

/*
 * The query of one page for a combination of filters, with status the
 * SQL of the state to list or NULL for none.
 *
 * The equality filters that have an index (queue, status, component: see
 * dlq--1.0--1.1.sql, "Storage") form a prefix P, and the page is written as a
 * row comparison over (P, message_id) ordered by (P, message_id):
 *
 *	  (P, message_id) > (values, cursor) AND (P) <= (values)
 *
 * which means exactly "P = values AND message_id > cursor" but can only be
 * served, in that order, by the index on (P, message_id).  Written as plain
 * equalities, the planner may prefer walking the primary key and filtering,
 * which reads every row of other queues between the cursor and the page,
 * and keeps doing so in a cached generic plan.  sqlstate, and component
 * when there is no queue, are plain filters on top.  Each partition of
 * dlq.messages has these indexes; the planner merges their ranges.
 */
static void
list_page_sql(StringInfo sql, int flags, const char *status)
{
	StringInfoData cols;
	StringInfoData vals;
	StringInfoData order;
	bool		desc = (flags & LIST_DESC) != 0;
	bool		component_in_index = (flags & LIST_QUEUE) && status != NULL;

	initStringInfo(&cols);
	initStringInfo(&vals);
	initStringInfo(&order);
#define PREFIX(col, val) \
	do { \
		appendStringInfo(&cols, "%sm.%s", cols.len ? ", " : "", col); \
		appendStringInfo(&vals, "%s%s", vals.len ? ", " : "", val); \
		appendStringInfo(&order, "m.%s%s, ", col, desc ? " DESC" : ""); \
	} while (0)
	if (flags & LIST_QUEUE)
		PREFIX("queue", "$1");
	if (status != NULL)
		PREFIX("status", status);
	if ((flags & LIST_COMPONENT) && component_in_index)
		PREFIX("component", "$5");
#undef PREFIX

	appendStringInfo(sql, "SELECT %s FROM dlq.message m WHERE ",
					 (flags & LIST_JSON) ? "pg_catalog.to_jsonb(m), m.message_id" : "m.*");
	if (cols.len > 0)
		appendStringInfo(sql, "(%s, m.message_id) %s (%s, $2) AND (%s) %s (%s)",
						 cols.data, desc ? "<" : ">", vals.data,
						 cols.data, desc ? ">=" : "<=", vals.data);
	else
		appendStringInfo(sql, "m.message_id %s $2", desc ? "<" : ">");
	if ((flags & LIST_COMPONENT) && !component_in_index)
		appendStringInfoString(sql, " AND m.component = $5");
	if (flags & LIST_SQLSTATE)
		appendStringInfoString(sql, " AND m.sqlstate = $6::pg_catalog.bpchar");

	appendStringInfo(sql, " ORDER BY %sm.message_id%s", order.data, desc ? " DESC" : "");
	/* $3 is batch_size; $7 is 1 when the page looks one row ahead. */
	appendStringInfoString(sql, " LIMIT $3 + $7");
}

/*
 * The plan of a page.  Without a status (status 'any') there is no index
 * on (queue, message_id): the page is merged from one page per state, each
 * a bounded range of the index with the state in its prefix, so it reads
 * at most five pages' worth of entries.
 */
static SPIPlanPtr
list_get_plan(int flags)
{
	static const char *const states[] =
	{"pending", "replaying", "review", "resolved", "expired"};
	Oid			types[LIST_NARGS + 1] = {TEXTOID, INT8OID, INT4OID, TEXTOID, TEXTOID, TEXTOID, INT4OID};
	StringInfoData sql;

	if (list_plans[flags] != NULL)
		return list_plans[flags];

	initStringInfo(&sql);
	if (flags & LIST_STATUS)
		list_page_sql(&sql, flags, "$4::dlq.status");
	else
	{
		appendStringInfoString(&sql, "SELECT p.* FROM (");
		for (int i = 0; i < lengthof(states); i++)
		{
			appendStringInfoString(&sql, i > 0 ? ") UNION ALL (" : "(");
			list_page_sql(&sql, flags, psprintf("'%s'::dlq.status", states[i]));
		}
		appendStringInfo(&sql, ")) p ORDER BY p.message_id%s LIMIT $3 + $7",
						 (flags & LIST_DESC) ? " DESC" : "");
	}
	list_plans[flags] = dlq_prepare_kept(sql.data, LIST_NARGS + 1, types);
	return list_plans[flags];
}

/*
 * Run the page query; extra is 1 to fetch one row more than the page.
 *
 * The plan is made with sorts, sequential and bitmap scans disabled, so that
 * the planner takes the index that delivers (P, message_id) in order even
 * when its estimates say otherwise: row comparisons are estimated on their
 * first column only, and on a small table a sort looks as cheap, but a page
 * must stay a bounded range scan as the table grows under a cached plan.
 * The merge of a status 'any' page still sorts (at most five pages): its
 * cost then counts as disabled, far above jit_above_cost, and JIT would
 * compile the plan at every call (a second for 20 rows); so JIT is off too.
 */
static void
list_run(ListArgs *a, int extra)
{
	static const char *const disabled[] =
	{"enable_seqscan", "enable_bitmapscan", "enable_sort", "enable_incremental_sort", "jit"};
	Datum		values[LIST_NARGS + 1];
	char		nulls[LIST_NARGS + 1];
	int			nest;

	memcpy(values, a->values, sizeof(a->values));
	memcpy(nulls, a->nulls, sizeof(a->nulls));
	values[2] = Int32GetDatum(a->batch_size);
	nulls[2] = ' ';
	values[LIST_NARGS] = Int32GetDatum(extra);
	nulls[LIST_NARGS] = ' ';

	nest = NewGUCNestLevel();
	for (int i = 0; i < lengthof(disabled); i++)
		(void) set_config_option(disabled[i], "off", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	dlq_execute_kept(list_get_plan(a->flags), values, nulls, true, 0, SPI_OK_SELECT);
	AtEOXact_GUC(true, nest);
}

PG_FUNCTION_INFO_V1(dlq_list);

/*
 * dlq_list(queue, cursor, batch_size, status, component, sqlstate,
 *			newest_first) returns setof dlq.message
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
