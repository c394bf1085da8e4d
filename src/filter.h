/*-------------------------------------------------------------------------
 *
 * filter.h
 *	  The arguments the bulk calls share (filter.c): the message filters
 *	  component, sqlstate, error_class, since and until, and the optional
 *	  dry_run, reason and ticket.
 *
 *-------------------------------------------------------------------------
 */
#ifndef DLQ_FILTER_H
#define DLQ_FILTER_H

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

/* Longest ticket (an id in another system), in bytes. */
#define DLQ_MAX_TICKET_BYTES 200

/* The filters of a bulk call, validated; NULL or has_* false when unset. */
typedef struct DlqFilter
{
	char	   *component;
	const char *sqlstate;
	const char *error_class;
	bool		has_since;
	TimestampTz since;
	bool		has_until;
	TimestampTz until;
} DlqFilter;

/*
 * Where a function has each filter among its arguments; -1 when it has
 * none.  An argument beyond PG_NARGS() (the shorter signature of a 1.0
 * schema) counts as NULL.
 */
typedef struct DlqFilterArgs
{
	int			component;
	int			sqlstate;
	int			error_class;
	int			since;
	int			until;
} DlqFilterArgs;

/*
 * A filter in SQL: DLQ_FILTER_NARGS parameters from first_param on, in
 * this order, whatever is set (dlq_filter_types, dlq_filter_values); the
 * text (dlq_filter_sql) names only the set ones, so that each of the
 * DLQ_FILTER_VARIANTS combinations (dlq_filter_flags) is its own plan.
 */
#define DLQ_FILTER_NARGS	5
#define DLQ_FILTER_VARIANTS (1 << DLQ_FILTER_NARGS)

extern void dlq_filter_parse(FunctionCallInfo fcinfo, const DlqFilterArgs *args,
							 DlqFilter *filter);
extern int	dlq_filter_flags(const DlqFilter *filter);
extern void dlq_filter_sql(StringInfo sql, int flags, const char *alias, int first_param);
extern void dlq_filter_types(Oid *types);
extern void dlq_filter_values(const DlqFilter *filter, Datum *values, char *nulls);
extern void dlq_filter_json(StringInfo buf, const DlqFilter *filter);

/* The other shared arguments; argno beyond PG_NARGS() counts as NULL. */
extern bool dlq_arg_dry_run(FunctionCallInfo fcinfo, int argno);
extern int64 dlq_arg_max_messages(FunctionCallInfo fcinfo, int argno, const char *hint);
extern char *dlq_arg_reason(FunctionCallInfo fcinfo, int argno);
extern char *dlq_arg_ticket(FunctionCallInfo fcinfo, int argno);
extern Jsonb *dlq_reason_detail(const char *reason, const char *ticket, const char *more);

#endif							/* DLQ_FILTER_H */
