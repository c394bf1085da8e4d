/*-------------------------------------------------------------------------
 *
 * facets.c
 *	  dlq_facets: how the messages of a queue (or of all) in one state (or
 *	  any) split by component, sqlstate, error_class, status or
 *	  source_relation, with the count and the age range of each part.
 *
 *	  The answer must come in well under a second over a million messages
 *	  of one queue, so it never reads the messages' rows for the counts:
 *
 *	  - component, sqlstate, error_class: one pass over the index of
 *		(queue, status, component, message_id) or of (queue, status,
 *		sqlstate, message_id) INCLUDE (error_class), index-only, grouped;
 *	  - status: the counts from dlq.counts (kept by triggers), no pass at
 *		all;
 *	  - source_relation: no index has it, so that one reads the rows
 *		(captured rows only have it, and a queue of captured rows is
 *		usually one table's).
 *
 *	  oldest_at and newest_at are the stored_at of the first and the last
 *	  message of each part in message_id order, read by id: two probes per
 *	  part instead of the rows of every message.  message_id is nearly in
 *	  stored_at order (src/list.c, list_time_bounds); they differ from the
 *	  least and greatest stored_at only by messages stored by a transaction
 *	  that began before an earlier message of the part was inserted, and by
 *	  at most how long that transaction ran before its INSERT.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/tuplestore.h"

#include "dlq.h"
#include "version.h"

/* What dlq_facets groups by; the index of the plan cache with the flags. */
typedef enum FacetBy
{
	FACET_COMPONENT,
	FACET_SQLSTATE,
	FACET_ERROR_CLASS,
	FACET_STATUS,
	FACET_SOURCE_RELATION,
	FACET_NBY
} FacetBy;

static const char *const facet_names[FACET_NBY] =
{"component", "sqlstate", "error_class", "status", "source_relation"};

/* The value of each part as SQL over dlq.messages m. */
static const char *const facet_exprs[FACET_NBY] =
{"m.component", "m.sqlstate", "m.error_class", NULL, "m.source_relation"};

#define FACET_QUEUE		0x01
#define FACET_STATUS_F	0x02
#define FACET_NFLAGS	0x04

static SPIPlanPtr facet_plans[FACET_NBY][FACET_NFLAGS];

/* The stored_at of the message with this id, as SQL. */
#define FACET_STORED_AT(id) \
	"(SELECT s.stored_at FROM dlq.messages s WHERE s.message_id = " id ")"

/*
 * The statement of one facet.  $1 is the queue, $2 the state.
 *
 * By status, the counts are dlq.counts' (each queue and state is the sum
 * of its shards), and the first and last message of each state are the
 * ends of its range in the index on (queue, status, message_id), written
 * as row comparisons so that only that index can serve them (as in
 * src/list.c).
 */
static SPIPlanPtr
facet_get_plan(FacetBy by, int flags)
{
	StringInfoData sql;
	Oid			types[2] = {TEXTOID, TEXTOID};

	if (facet_plans[by][flags] != NULL)
		return facet_plans[by][flags];

	initStringInfo(&sql);
	if (by == FACET_STATUS)
	{
		appendStringInfoString(&sql,
							   "SELECT g.queue, g.status::pg_catalog.text, g.n,"
							   " (SELECT f.stored_at FROM dlq.messages f"
							   "   WHERE (f.queue, f.status, f.message_id) > (g.queue, g.status, 0)"
							   "     AND (f.queue, f.status) <= (g.queue, g.status)"
							   "   ORDER BY f.queue, f.status, f.message_id LIMIT 1),"
							   " (SELECT l.stored_at FROM dlq.messages l"
							   "   WHERE (l.queue, l.status, l.message_id) < (g.queue, g.status, 9223372036854775807)"
							   "     AND (l.queue, l.status) >= (g.queue, g.status)"
							   "   ORDER BY l.queue DESC, l.status DESC, l.message_id DESC LIMIT 1)"
							   " FROM (SELECT c.queue, c.status, sum(c.n)::bigint AS n FROM dlq.counts c"
							   "        WHERE true");
		if (flags & FACET_QUEUE)
			appendStringInfoString(&sql, " AND c.queue = $1");
		if (flags & FACET_STATUS_F)
			appendStringInfoString(&sql, " AND c.status = $2::dlq.status");
		appendStringInfoString(&sql,
							   " GROUP BY c.queue, c.status HAVING sum(c.n) > 0) g"
							   " ORDER BY g.n DESC, g.status::pg_catalog.text, g.queue");
	}
	else
	{
		appendStringInfo(&sql,
						 "SELECT g.queue, g.value::pg_catalog.text, g.n, "
						 FACET_STORED_AT("g.first_id") ", " FACET_STORED_AT("g.last_id")
						 " FROM (SELECT m.queue, %s AS value, pg_catalog.count(*) AS n,"
						 "        pg_catalog.min(m.message_id) AS first_id,"
						 "        pg_catalog.max(m.message_id) AS last_id"
						 "        FROM dlq.messages m WHERE true",
						 facet_exprs[by]);
		if (flags & FACET_QUEUE)
			appendStringInfoString(&sql, " AND m.queue = $1");
		if (flags & FACET_STATUS_F)
			appendStringInfoString(&sql, " AND m.status = $2::dlq.status");
		appendStringInfoString(&sql,
							   " GROUP BY 1, 2) g"
							   " ORDER BY g.n DESC, g.value::pg_catalog.text, g.queue");
	}
	facet_plans[by][flags] = dlq_prepare_kept(sql.data, 2, types);
	return facet_plans[by][flags];
}

/*
 * Validate "by": one of facet_names, else 22023, quoting the value back
 * only when it is short.
 */
static FacetBy
facet_check_by(text *value)
{
	char	   *s;

	if (VARSIZE_ANY_EXHDR(value) > DLQ_MAX_NAME_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid by"),
				 errdetail("It is %zu bytes long.", VARSIZE_ANY_EXHDR(value)),
				 errhint("Use one of component, sqlstate, error_class, status, source_relation.")));
	s = text_to_cstring(value);
	for (int i = 0; i < FACET_NBY; i++)
		if (strcmp(s, facet_names[i]) == 0)
			return (FacetBy) i;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid by \"%s\"", s),
			 errhint("Use one of component, sqlstate, error_class, status, source_relation.")));
	return FACET_NBY;			/* keep compiler quiet */
}

PG_FUNCTION_INFO_V1(dlq_facets);

/*
 * dlq_facets(queue text, by text, status text)
 *	  returns table (queue, value, count, oldest_at, newest_at)
 *
 * Rows by count, largest first, then by value.  Runs as the caller; reads
 * as the owner, like dlq_list.
 */
Datum
dlq_facets(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *queue;
	const char *status;
	FacetBy		by;
	int			flags = 0;
	Datum		values[2] = {0, 0};
	char		nulls[2] = {'n', 'n'};
	DlqOwnerContext owner;
	int			nest;

	dlq_require_current_schema();

	queue = dlq_check_name("queue name", PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0), true);
	if (queue)
	{
		flags |= FACET_QUEUE;
		values[0] = CStringGetTextDatum(queue);
		nulls[0] = ' ';
	}

	dlq_check_not_null(fcinfo, 1, "by");
	by = facet_check_by(PG_GETARG_TEXT_PP(1));

	status = dlq_check_status(PG_ARGISNULL(2) ? NULL : PG_GETARG_TEXT_PP(2), true);
	if (strcmp(status, "any") != 0)
	{
		flags |= FACET_STATUS_F;
		values[1] = CStringGetTextDatum(status);
		nulls[1] = ' ';
	}

	InitMaterializedSRF(fcinfo, 0);
	if (rsinfo->setDesc->natts != 5)
		elog(ERROR, "dlq_facets must return five columns");

	dlq_become_owner(&owner);
	SPI_connect();

	/*
	 * Parts that an index serves are counted over that index alone, even
	 * when the planner's estimates (a visibility map not yet set, say) would
	 * rather read the table.  source_relation has no index: the table is
	 * read.  JIT would cost more than the whole count, and parallel workers
	 * made the count slower, not faster, when measured over a million
	 * messages on two busy cores: one backend walking the index is enough.
	 */
	nest = NewGUCNestLevel();
	(void) set_config_option("jit", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("max_parallel_workers_per_gather", "0", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (by != FACET_SOURCE_RELATION)
	{
		(void) set_config_option("enable_seqscan", "off", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
		(void) set_config_option("enable_bitmapscan", "off", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	}
	dlq_execute_kept(facet_get_plan(by, flags), values, nulls, true, 0, SPI_OK_SELECT);
	AtEOXact_GUC(true, nest);

	for (uint64 i = 0; i < SPI_processed; i++)
		tuplestore_puttuple(rsinfo->setResult, SPI_tuptable->vals[i]);
	SPI_finish();
	dlq_restore_caller(&owner);

	return (Datum) 0;
}
