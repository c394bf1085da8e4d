/*-------------------------------------------------------------------------
 *
 * filter.c
 *	  The arguments the bulk calls share: the message filters (component,
 *	  sqlstate, error_class, since, until) of dlq_reprocess_all,
 *	  dlq_discard_all, dlq_resolve_all and dlq_move_all, and their dry_run,
 *	  reason and ticket.
 *
 *	  Every argument is validated here before the call changes anything.
 *	  A filter becomes SQL with a fixed set of parameters: the statement
 *	  text names only the filters that are set, so that each combination
 *	  is a plan of its own that the planner sees without "$n IS NULL OR"
 *	  branches, while the parameters stay numbered the same in all.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "dlq.h"
#include "filter.h"

#define FILTER_COMPONENT	0x01
#define FILTER_SQLSTATE		0x02
#define FILTER_ERROR_CLASS	0x04
#define FILTER_SINCE		0x08
#define FILTER_UNTIL		0x10

/* Is argument argno given and not NULL?  -1 and beyond PG_NARGS() are not. */
static bool
filter_has_arg(FunctionCallInfo fcinfo, int argno)
{
	return argno >= 0 && argno < PG_NARGS() && !PG_ARGISNULL(argno);
}

/*
 * Validate the filters of a bulk call: component a name, sqlstate five
 * characters [0-9A-Z], error_class transient or permanent, since before
 * until (stored_at >= since AND stored_at < until).
 */
void
dlq_filter_parse(FunctionCallInfo fcinfo, const DlqFilterArgs *args, DlqFilter *filter)
{
	memset(filter, 0, sizeof(*filter));
	if (filter_has_arg(fcinfo, args->component))
		filter->component = dlq_check_name("component", PG_GETARG_TEXT_PP(args->component), false);
	if (filter_has_arg(fcinfo, args->sqlstate))
		filter->sqlstate = dlq_check_sqlstate(PG_GETARG_TEXT_PP(args->sqlstate));
	if (filter_has_arg(fcinfo, args->error_class))
	{
		char	   *s = text_to_cstring(PG_GETARG_TEXT_PP(args->error_class));

		if (strcmp(s, "transient") == 0)
			filter->error_class = "transient";
		else if (strcmp(s, "permanent") == 0)
			filter->error_class = "permanent";
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid error_class \"%s\"", s),
					 errhint("Use transient or permanent.")));
	}
	if (filter_has_arg(fcinfo, args->since))
	{
		filter->has_since = true;
		filter->since = PG_GETARG_TIMESTAMPTZ(args->since);
	}
	if (filter_has_arg(fcinfo, args->until))
	{
		filter->has_until = true;
		filter->until = PG_GETARG_TIMESTAMPTZ(args->until);
	}
	if (filter->has_since && filter->has_until && filter->since >= filter->until)
	{
		/* timestamptz_to_str returns a static buffer */
		char	   *since = pstrdup(timestamptz_to_str(filter->since));
		char	   *until = pstrdup(timestamptz_to_str(filter->until));

		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("since must be earlier than until"),
				 errdetail("since is %s and until is %s; messages stored at or after since and before until are selected.",
						   since, until)));
	}
}

/* Which filters are set, as the variant number of the statements. */
int
dlq_filter_flags(const DlqFilter *filter)
{
	return (filter->component ? FILTER_COMPONENT : 0) |
		(filter->sqlstate ? FILTER_SQLSTATE : 0) |
		(filter->error_class ? FILTER_ERROR_CLASS : 0) |
		(filter->has_since ? FILTER_SINCE : 0) |
		(filter->has_until ? FILTER_UNTIL : 0);
}

/*
 * Append " AND ..." for each filter of flags, on the columns of alias,
 * with parameters first_param to first_param + DLQ_FILTER_NARGS - 1.
 */
void
dlq_filter_sql(StringInfo sql, int flags, const char *alias, int first_param)
{
	if (flags & FILTER_COMPONENT)
		appendStringInfo(sql, " AND %s.component = $%d", alias, first_param);
	if (flags & FILTER_SQLSTATE)
		appendStringInfo(sql, " AND %s.sqlstate = $%d::pg_catalog.bpchar", alias, first_param + 1);
	if (flags & FILTER_ERROR_CLASS)
		appendStringInfo(sql, " AND %s.error_class = $%d", alias, first_param + 2);
	if (flags & FILTER_SINCE)
		appendStringInfo(sql, " AND %s.stored_at >= $%d", alias, first_param + 3);
	if (flags & FILTER_UNTIL)
		appendStringInfo(sql, " AND %s.stored_at < $%d", alias, first_param + 4);
}

/* The types of the DLQ_FILTER_NARGS parameters. */
void
dlq_filter_types(Oid *types)
{
	types[0] = TEXTOID;
	types[1] = TEXTOID;
	types[2] = TEXTOID;
	types[3] = TIMESTAMPTZOID;
	types[4] = TIMESTAMPTZOID;
}

/* The values of the DLQ_FILTER_NARGS parameters ('n' in nulls when unset). */
void
dlq_filter_values(const DlqFilter *filter, Datum *values, char *nulls)
{
	memset(nulls, ' ', DLQ_FILTER_NARGS);
	if (filter->component)
		values[0] = CStringGetTextDatum(filter->component);
	else
		nulls[0] = 'n';
	if (filter->sqlstate)
		values[1] = CStringGetTextDatum(filter->sqlstate);
	else
		nulls[1] = 'n';
	if (filter->error_class)
		values[2] = CStringGetTextDatum(filter->error_class);
	else
		nulls[2] = 'n';
	values[3] = TimestampTzGetDatum(filter->since);
	if (!filter->has_since)
		nulls[3] = 'n';
	values[4] = TimestampTzGetDatum(filter->until);
	if (!filter->has_until)
		nulls[4] = 'n';
}

/*
 * The filters that are set as JSON members ("component": ..., ...), each
 * preceded by ", ", for the detail of an audit event.
 */
void
dlq_filter_json(StringInfo buf, const DlqFilter *filter)
{
	if (filter->component)
		appendStringInfo(buf, ", \"component\": %s", dlq_json_quote(filter->component));
	if (filter->sqlstate)
		appendStringInfo(buf, ", \"sqlstate\": %s", dlq_json_quote(filter->sqlstate));
	if (filter->error_class)
		appendStringInfo(buf, ", \"error_class\": %s", dlq_json_quote(filter->error_class));
	if (filter->has_since)
		appendStringInfo(buf, ", \"since\": %s",
						 dlq_json_quote(timestamptz_to_str(filter->since)));
	if (filter->has_until)
		appendStringInfo(buf, ", \"until\": %s",
						 dlq_json_quote(timestamptz_to_str(filter->until)));
}

/* dry_run: false when absent; NULL is refused (22004). */
bool
dlq_arg_dry_run(FunctionCallInfo fcinfo, int argno)
{
	if (argno >= PG_NARGS())
		return false;
	dlq_check_not_null(fcinfo, argno, "dry_run");
	return PG_GETARG_BOOL(argno);
}

/*
 * max_messages of a bulk call: no limit when NULL, else at least 1 (22023,
 * with the hint the caller gives).
 */
int64
dlq_arg_max_messages(FunctionCallInfo fcinfo, int argno, const char *hint)
{
	if (PG_ARGISNULL(argno))
		return PG_INT64_MAX;
	if (PG_GETARG_INT32(argno) < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_messages must be positive"),
				 errhint("%s", hint)));
	return PG_GETARG_INT32(argno);
}

/* reason: free text kept on the audit event, at most 54000 bytes. */
char *
dlq_arg_reason(FunctionCallInfo fcinfo, int argno)
{
	if (!filter_has_arg(fcinfo, argno))
		return NULL;
	dlq_check_size("reason", (struct varlena *) PG_GETARG_TEXT_PP(argno));
	return text_to_cstring(PG_GETARG_TEXT_PP(argno));
}

/*
 * ticket: an id in another system (an incident, an issue), so a name: 1 to
 * DLQ_MAX_TICKET_BYTES bytes and no C0 or C1 control characters, the rules
 * of dlq_check_name with a longer limit (22023 when too long, as for
 * names).
 */
char *
dlq_arg_ticket(FunctionCallInfo fcinfo, int argno)
{
	if (!filter_has_arg(fcinfo, argno))
		return NULL;
	return dlq_check_label("ticket", PG_GETARG_TEXT_PP(argno), false, DLQ_MAX_TICKET_BYTES);
}

/*
 * The detail of an audit event: reason and ticket when given, and more
 * (JSON members, each preceded by ", ") when not empty; NULL when there
 * is nothing.
 */
Jsonb *
dlq_reason_detail(const char *reason, const char *ticket, const char *more)
{
	StringInfoData buf;

	if (reason == NULL && ticket == NULL && (more == NULL || more[0] == '\0'))
		return NULL;
	initStringInfo(&buf);
	if (reason)
		appendStringInfo(&buf, ", \"reason\": %s", dlq_json_quote(reason));
	if (ticket)
		appendStringInfo(&buf, ", \"ticket\": %s", dlq_json_quote(ticket));
	if (more)
		appendStringInfoString(&buf, more);
	/* every member came with a leading ", " */
	return dlq_jsonb(psprintf("{%s}", buf.data + 2));
}
