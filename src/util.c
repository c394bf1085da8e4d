/*-------------------------------------------------------------------------
 *
 * util.c
 *	  Helpers every module of dlq shares: argument validation with
 *	  deliberate SQLSTATEs, running as the extension owner with a pinned
 *	  search_path and back as the caller, plans kept for the backend's life
 *	  and SPI calls whose result code is checked (dlq_execute_kept,
 *	  dlq_execute_sql), bigint[] id arrays, JSON string literals, request
 *	  ids, default channel names, the audit trail (dlq_audit) with the
 *	  per-queue tallies that feed it, and the table an isolate-mode intake
 *	  view reads.  Nothing here calls another module.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/catalog.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "rewrite/prs2lock.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/regproc.h"
#include "utils/resowner.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "utils/uuid.h"

#include "dlq.h"

/* dlq.messages and its owner, cached until a relcache invalidation. */
static Oid	cached_messages_relid = InvalidOid;
static Oid	cached_owner = InvalidOid;
static bool callback_registered = false;

static SPIPlanPtr audit_plan = NULL;

static void
util_relcache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == cached_messages_relid)
	{
		cached_messages_relid = InvalidOid;
		cached_owner = InvalidOid;
	}
}

/*
 * The OID of dlq.messages; raises an error when the extension is not
 * installed in this database (the library may be loaded without it).
 */
Oid
dlq_messages_relid(void)
{
	if (!OidIsValid(cached_messages_relid))
	{
		Oid			nsp = get_namespace_oid("dlq", true);
		Oid			relid = InvalidOid;

		if (OidIsValid(nsp))
			relid = get_relname_relid("messages", nsp);
		if (!OidIsValid(relid))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("extension \"dlq\" is not installed in this database"),
					 errhint("Run CREATE EXTENSION dlq.")));

		if (!callback_registered)
		{
			CacheRegisterRelcacheCallback(util_relcache_callback, (Datum) 0);
			callback_registered = true;
		}
		{
			HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));

			if (!HeapTupleIsValid(tup))
				elog(ERROR, "cache lookup failed for relation %u", relid);
			cached_owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
			ReleaseSysCache(tup);
		}
		cached_messages_relid = relid;
	}
	return cached_messages_relid;
}

/*
 * Switch to the extension owner with search_path pinned to pg_catalog, as
 * fmgr does for a SECURITY DEFINER function.  An error unwinds both with the
 * transaction; on success the caller must call dlq_restore_caller().
 */
void
dlq_become_owner(DlqOwnerContext *ctx)
{
	(void) dlq_messages_relid();

	GetUserIdAndSecContext(&ctx->caller, &ctx->caller_sec_context);
	ctx->caller_search_path = namespace_search_path;
	SetUserIdAndSecContext(cached_owner,
						   ctx->caller_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	ctx->guc_nest_level = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_SUSET, PGC_S_SESSION, GUC_ACTION_SAVE,
							 true, 0, false);
}

void
dlq_restore_caller(DlqOwnerContext *ctx)
{
	AtEOXact_GUC(true, ctx->guc_nest_level);
	SetUserIdAndSecContext(ctx->caller, ctx->caller_sec_context);
}

/*
 * The caller's own code on a user table (its triggers, a handler) runs in a
 * security-restricted operation, as in maintenance commands and pg_cron's
 * jobs: it cannot SET ROLE or otherwise change session state that would
 * outlive the call.
 */
void
dlq_as_caller_begin(const DlqOwnerContext *ctx, DlqCallerScope *scope)
{
	GetUserIdAndSecContext(&scope->userid, &scope->sec_context);
	SetUserIdAndSecContext(ctx->caller,
						   ctx->caller_sec_context | SECURITY_RESTRICTED_OPERATION);
	scope->guc_nest_level = NewGUCNestLevel();
	(void) set_config_option("search_path", ctx->caller_search_path,
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
							 true, 0, false);
}

void
dlq_as_caller_end(DlqCallerScope *scope)
{
	AtEOXact_GUC(true, scope->guc_nest_level);
	SetUserIdAndSecContext(scope->userid, scope->sec_context);
}

/*
 * The search_path a session of role starts with in this database: its
 * setting for this database, its own, the database's, everyone's (ALTER
 * ROLE / ALTER DATABASE ... SET, in the precedence of a login), else
 * PostgreSQL's default.  Never the current session's: code run as role
 * (a replay handler, the worker's retries) must not resolve names in a path
 * someone else chose.  Inside SPI.
 */
char *
dlq_role_search_path(Oid role)
{
	static SPIPlanPtr plan = NULL;
	Datum		values[2] = {ObjectIdGetDatum(role), ObjectIdGetDatum(MyDatabaseId)};
	bool		isnull;
	char	   *path;

	if (plan == NULL)
	{
		Oid			types[2] = {OIDOID, OIDOID};

		plan = dlq_prepare_kept("SELECT pg_catalog.substr(c, 13)"
								"  FROM pg_catalog.pg_db_role_setting s,"
								"       pg_catalog.unnest(s.setconfig) c"
								" WHERE s.setrole IN ($1, 0) AND s.setdatabase IN ($2, 0)"
								"   AND c OPERATOR(pg_catalog.^@) 'search_path='"
								" ORDER BY s.setrole = 0, s.setdatabase = 0 LIMIT 1",
								2, types);
	}
	if (dlq_execute_kept(plan, values, NULL, true, 1, SPI_OK_SELECT) == 0)
		return pstrdup("\"$user\", public");
	path = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
											 1, &isnull));
	SPI_freetuptable(SPI_tuptable);
	return path;
}

/* The owner of a relation that exists. */
Oid
dlq_rel_owner(Oid relid)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

/*
 * Act as the owner of a relation for work that runs code its owner wrote
 * (a replay target's triggers, CHECK and default expressions; a stage
 * source's row-level security policies), the way PostgreSQL runs ANALYZE:
 * in a security-restricted operation, with a search_path the caller does
 * not choose.  The caller's own right to the work is checked before.  End
 * with dlq_as_relowner_end on every path (PG_FINALLY).
 */
void
dlq_as_relowner_begin(Oid relowner, DlqCallerScope *scope)
{
	GetUserIdAndSecContext(&scope->userid, &scope->sec_context);
	SetUserIdAndSecContext(relowner, scope->sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	scope->guc_nest_level = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
							 true, 0, false);
}

void
dlq_as_relowner_end(DlqCallerScope *scope)
{
	/* Also on the error path, as PostgreSQL's own maintenance commands do. */
	AtEOXact_GUC(false, scope->guc_nest_level);
	SetUserIdAndSecContext(scope->userid, scope->sec_context);
}

/*
 * Raise 22004 if argument argno is NULL.  "what" names the argument as the
 * user wrote it.
 */
void
dlq_check_not_null(FunctionCallInfo fcinfo, int argno, const char *what)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
}

/*
 * Validate a name: a queue, component, stage or channel.  1 to 63 bytes
 * and no control characters, C0 (and DEL) or C1 (U+0080 to U+009F, in
 * UTF-8 the bytes 0xc2 0x80 to 0xc2 0x9f; in the ISO 8859 encodings the
 * bytes 0x80 to 0x9f).  Every name dlq accepts comes through here, so that
 * a bad one fails with 22023 before anything is written, not with a
 * constraint violation or not at all.  Returns it as a C string, or NULL
 * when it is NULL and that is allowed.
 */
char *
dlq_check_name(const char *what, text *value, bool allow_null)
{
	return dlq_check_label(what, value, allow_null, DLQ_MAX_NAME_BYTES);
}

/*
 * The rules of dlq_check_name with another length limit, for name-like
 * values that may be longer (a ticket id).  The length is checked before
 * the value is copied.
 */
char *
dlq_check_label(const char *what, text *value, bool allow_null, int max_bytes)
{
	int			encoding = GetDatabaseEncoding();
	bool		c1_bytes = (encoding >= PG_LATIN1 && encoding <= PG_LATIN10) ||
		(encoding >= PG_ISO_8859_5 && encoding <= PG_ISO_8859_8);
	char	   *s;
	int			len;

	if (value == NULL)
	{
		if (allow_null)
			return NULL;
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
	}

	len = VARSIZE_ANY_EXHDR(value);
	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", what)));
	if (len > max_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is too long", what),
				 errdetail("It is %d bytes; the limit is %d bytes.",
						   len, max_bytes)));
	s = text_to_cstring(value);
	for (int i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) s[i];
		unsigned char next = (unsigned char) s[i + 1];	/* '\0' at the end */

		if (c < 0x20 || c == 0x7f || (c1_bytes && c >= 0x80 && c <= 0x9f))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s must not contain control characters", what),
					 errdetail("Byte %d is 0x%02x.", i + 1, c)));
		if (encoding == PG_UTF8 && c == 0xc2 && next >= 0x80 && next <= 0x9f)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s must not contain control characters", what),
					 errdetail("Bytes %d and %d are U+%04X.", i + 1, i + 2, next)));
	}
	return s;
}

/*
 * Validate a queue's channel: a name, and not the channel on which the
 * worker sends alerts (a queue's consumers would receive alerts, and alert
 * listeners replay requests).
 */
char *
dlq_check_channel(text *value)
{
	char	   *channel = dlq_check_name("channel", value, false);

	if (strcmp(channel, DLQ_ALERT_CHANNEL) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("channel \"%s\" is reserved", channel),
				 errdetail("The dlq background worker sends alerts on it.")));
	return channel;
}

/*
 * A payload or error text against dlq.max_payload_bytes: the other limit on
 * sizes, set by a superuser (dlq_store, dlq_nack).
 */
void
dlq_check_payload_size(const char *what, Size bytes)
{
	if (bytes > (Size) dlq_max_payload_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s is too large", what),
				 errdetail("It is %d bytes; dlq.max_payload_bytes is %d.",
						   (int) bytes, dlq_max_payload_bytes)));
}

/*
 * Validate a text or jsonb argument that dlq keeps (metadata, error_detail,
 * a note): at most DLQ_MAX_TEXT_ARG_BYTES, else 54000 like every other size
 * limit of dlq.  NULL passes.  jsonb is measured in its binary form, which
 * is about the size of its text.
 */
void
dlq_check_size(const char *what, const struct varlena *value)
{
	Size		bytes;

	if (value == NULL)
		return;
	bytes = VARSIZE_ANY_EXHDR(value);
	if (bytes > DLQ_MAX_TEXT_ARG_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s is too large", what),
				 errdetail("It is %zu bytes; the limit is %d bytes.",
						   bytes, DLQ_MAX_TEXT_ARG_BYTES)));
}

/*
 * Validate interval argument argno: positive (or, with allow_zero, not
 * negative) and at most max_years years, a year counting as 366 days (as an
 * interval '1 year' is 360 days, '365 days' passes a one-year limit).  Each
 * field (months, days, time) is bounded too, not only their sum, so that
 * adding the interval to any timestamp of this era stays in range:
 * '1000000 years -359999000 days' is about 1000 days but would overflow.
 * Returns the interval, or NULL when the argument is NULL (the caller
 * decides whether that is allowed).
 */
Interval *
dlq_check_interval(FunctionCallInfo fcinfo, int argno, const char *what,
				   bool allow_zero, int max_years)
{
	Interval   *value;
	Interval	zero = {0};
	Interval	max = {0};
	int32		cmp;

	if (PG_ARGISNULL(argno))
		return NULL;
	value = PG_GETARG_INTERVAL_P(argno);
	max.day = max_years * 366;

	cmp = DatumGetInt32(DirectFunctionCall2(interval_cmp, IntervalPGetDatum(value),
											IntervalPGetDatum(&zero)));
	if (cmp < 0 && allow_zero)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be negative", what)));
	if (cmp <= 0 && !allow_zero)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be positive", what)));
	if (DatumGetInt32(DirectFunctionCall2(interval_cmp, IntervalPGetDatum(value),
										  IntervalPGetDatum(&max))) > 0 ||
		value->month > max_years * MONTHS_PER_YEAR ||
		value->month < -max_years * MONTHS_PER_YEAR ||
		value->day > max.day || value->day < -max.day ||
		value->time > max.day * USECS_PER_DAY || value->time < -max.day * USECS_PER_DAY)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg_plural("%s must be at most %d year",
							   "%s must be at most %d years",
							   max_years, what, max_years),
				 errdetail("The limit is %d days, for the whole and for each of its fields.",
						   max.day)));
	return value;
}

/*
 * May roleid bind a queue to relation relid (dlq_attach, replay_target)?
 * Binding makes dlq write into the table later, so only its owner may, and
 * never into a system catalog or one of dlq's own tables, whoever asks.
 */
void
dlq_check_bindable_relation(Oid relid, Oid roleid)
{
	char		relkind = get_rel_relkind(relid);
	char	   *relname = get_rel_name(relid);
	Oid			extoid = get_extension_oid("dlq", true);

	if (relname == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	if (IsCatalogRelationOid(relid) ||
		IsCatalogNamespace(get_rel_namespace(relid)) ||
		IsToastNamespace(get_rel_namespace(relid)) ||
		get_rel_namespace(relid) == get_namespace_oid("dlq", true) ||
		(OidIsValid(extoid) &&
		 getExtensionOfObject(RelationRelationId, relid) == extoid))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("cannot bind a queue to \"%s\"", relname),
				 errdetail("System catalogs and the tables of dlq cannot be capture or replay targets.")));
	if (relkind != RELKIND_RELATION && relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table", relname)));
#if PG_VERSION_NUM >= 160000
	if (!object_ownercheck(RelationRelationId, relid, roleid))
#else
	if (!pg_class_ownercheck(relid, roleid))
#endif
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of table %s", relname),
				 errdetail("Only the owner of a table may bind a queue to it.")));
}

/*
 * The table an isolate-mode intake view reads, which its trigger inserts
 * into: the one relation in the range table of the view's query, not
 * counting the view itself (before PostgreSQL 16 the stored query holds it
 * twice, as OLD and NEW).  InvalidOid when view is not a view, or reads no
 * relation or more than one.  The query names the table by OID and pg_dump
 * writes it back by name, so the answer follows renames and survives a dump
 * and restore, which an OID in the trigger's arguments does not.  The
 * caller checks what kind of relation it is.  Only a table the view's
 * owner owns (or whose owning role it is a member of), as dlq_attach
 * requires: a view someone repointed at another role's table is nobody's
 * intake (InvalidOid), so that its trigger never captures rows as that
 * table's, nor stands in for that table's own intake view.
 */
Oid
dlq_intake_view_target(Relation view)
{
	RuleLock   *rules = view->rd_rules;
	Oid			target = InvalidOid;

	if (view->rd_rel->relkind != RELKIND_VIEW || rules == NULL)
		return InvalidOid;
	for (int i = 0; i < rules->numLocks; i++)
	{
		Query	   *query;
		ListCell   *lc;

		if (rules->rules[i]->event != CMD_SELECT ||
			list_length(rules->rules[i]->actions) != 1)
			continue;
		query = linitial_node(Query, rules->rules[i]->actions);
		foreach(lc, query->rtable)
		{
			RangeTblEntry *rte = lfirst_node(RangeTblEntry, lc);

			if (rte->rtekind != RTE_RELATION || rte->relid == RelationGetRelid(view))
				continue;
			if (OidIsValid(target) && rte->relid != target)
				return InvalidOid;
			target = rte->relid;
		}
	}
	if (OidIsValid(target) &&
		!has_privs_of_role(view->rd_rel->relowner, dlq_rel_owner(target)))
		return InvalidOid;
	return target;
}

/*
 * May a replay handler take an argument of this type?  jsonb (the payload)
 * or dlq.message (the whole message, the row type of the view).
 */
static bool
dlq_handler_arg_ok(Oid argtype)
{
	Oid			nsp = get_namespace_oid("dlq", true);
	Oid			view = OidIsValid(nsp) ? get_relname_relid("message", nsp) : InvalidOid;

	return argtype == JSONBOID ||
		(OidIsValid(view) && argtype == get_rel_type_id(view));
}

/*
 * Raise unless roleid may bind a queue's replays to function funcid (the
 * replay_handler of dlq_configure): it must exist (42883), be owned by the
 * role (42501), not be one of dlq's own (42501), and be a plain function of
 * one argument of type jsonb or dlq.message that does not return a set
 * (22023).
 */
void
dlq_check_bindable_function(Oid funcid, Oid roleid)
{
	HeapTuple	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(funcid));
	Form_pg_proc proc;
	char	   *name;
	Oid			extoid = get_extension_oid("dlq", true);

	if (!HeapTupleIsValid(tuple))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function with OID %u does not exist", funcid)));
	proc = (Form_pg_proc) GETSTRUCT(tuple);
	name = format_procedure(funcid);
#if PG_VERSION_NUM >= 160000
	if (!object_ownercheck(ProcedureRelationId, funcid, roleid))
#else
	if (!pg_proc_ownercheck(funcid, roleid))
#endif
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of function %s", name),
				 errdetail("Only the owner of a function may make it a queue's replay handler.")));
	if (proc->pronamespace == get_namespace_oid("dlq", true) ||
		(OidIsValid(extoid) && getExtensionOfObject(ProcedureRelationId, funcid) == extoid))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("cannot make %s a replay handler", name),
				 errdetail("The functions of dlq cannot be replay handlers.")));
	if (proc->prokind != PROKIND_FUNCTION || proc->proretset || proc->pronargs != 1 ||
		!dlq_handler_arg_ok(proc->proargtypes.values[0]))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s cannot be a replay handler", name),
				 errdetail("A replay handler is a function of one argument, of type jsonb (the payload) or dlq.message (the message), that does not return a set.")));
	ReleaseSysCache(tuple);
}

/*
 * Validate a SQLSTATE: five characters, each 0-9 or A-Z.  NULL passes.
 */
const char *
dlq_check_sqlstate(text *value)
{
	char	   *s;

	if (value == NULL)
		return NULL;
	s = text_to_cstring(value);
	if (strlen(s) != 5 || strspn(s, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") != 5)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid SQLSTATE \"%s\"", s),
				 errdetail("A SQLSTATE is five characters, each a digit or an upper-case ASCII letter.")));
	return s;
}

/*
 * transient: connection (08), transaction rollback (40), insufficient
 * resources (53), lock not available (55P03), query canceled (57014) and
 * system errors (58); they may succeed if retried.  Everything else,
 * including an unknown SQLSTATE, is permanent.
 */
const char *
dlq_error_class(const char *sqlstate)
{
	if (sqlstate == NULL)
		return "permanent";
	if (strncmp(sqlstate, "08", 2) == 0 ||
		strncmp(sqlstate, "40", 2) == 0 ||
		strncmp(sqlstate, "53", 2) == 0 ||
		strncmp(sqlstate, "58", 2) == 0 ||
		strcmp(sqlstate, "55P03") == 0 ||
		strcmp(sqlstate, "57014") == 0)
		return "transient";
	return "permanent";
}

void
dlq_check_json_object(const char *what, Jsonb *value)
{
	if (value != NULL && !JB_ROOT_IS_OBJECT(value))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a JSON object", what)));
}

/*
 * Validate a status name; "any" only where allow_any.  Returns the name.
 * "archived" is a state of the 1.1 schema: a caller that puts it into SQL
 * on a 1.0 schema must call dlq_require_current_schema() first.
 */
const char *
dlq_check_status(text *value, bool allow_any)
{
	static const char *const statuses[] =
	{"pending", "replaying", "resolved", "review", "expired", "archived"};
	char	   *s;

	if (value == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("status must not be null")));
	/* No state is that long: a huge argument is not quoted back. */
	if (VARSIZE_ANY_EXHDR(value) > DLQ_MAX_NAME_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid status"),
				 errdetail("It is %zu bytes long.", VARSIZE_ANY_EXHDR(value)),
				 errhint("Use one of pending, replaying, resolved, review, expired, archived%s.",
						 allow_any ? " or any" : "")));
	s = text_to_cstring(value);
	for (int i = 0; i < lengthof(statuses); i++)
		if (strcmp(s, statuses[i]) == 0)
			return statuses[i];
	if (allow_any && strcmp(s, "any") == 0)
		return "any";
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid status \"%s\"", s),
			 errhint("Use one of pending, replaying, resolved, review, expired, archived%s.",
					 allow_any ? " or any" : "")));
	return NULL;				/* keep compiler quiet */
}

static int
util_cmp_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

/*
 * Validate an array of message ids: not NULL (the caller passes NULL for a
 * NULL argument), one dimension, not empty, no NULL elements, at most
 * dlq.max_ids_per_call.  Returns the ids sorted with duplicates removed, so
 * that rows are always locked in the same order.
 */
int64 *
dlq_check_id_array(ArrayType *ids, int *nids)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int64	   *result;
	int			nunique = 0;

	if (ids == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("message_ids must not be null")));
	if (ARR_NDIM(ids) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("message_ids must be a one-dimensional array")));
	n = ArrayGetNItems(ARR_NDIM(ids), ARR_DIMS(ids));
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("message_ids must not be empty")));
	if (n > dlq_max_ids_per_call)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many message ids"),
				 errdetail("%d ids were given; the limit is %d.", n, dlq_max_ids_per_call),
				 errhint("Use the _all form of the function, or raise dlq.max_ids_per_call.")));
	if (array_contains_nulls(ids))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("message_ids must not contain nulls")));

	deconstruct_array(ids, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &elems, &nulls, &n);
	result = palloc(sizeof(int64) * n);
	for (int i = 0; i < n; i++)
		result[i] = DatumGetInt64(elems[i]);
	qsort(result, n, sizeof(int64), util_cmp_int64);
	for (int i = 0; i < n; i++)
		if (nunique == 0 || result[nunique - 1] != result[i])
			result[nunique++] = result[i];
	*nids = nunique;
	return result;
}

/* A bigint[] datum of n ids. */
Datum
dlq_id_array_datum(const int64 *ids, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		elems[i] = Int64GetDatum(ids[i]);
	return PointerGetDatum(construct_array(elems, n, INT8OID, 8,
										   FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/* The elements of a bigint[] without NULLs. */
int64 *
dlq_id_array_values(ArrayType *array, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	int64	   *ids;

	deconstruct_array(array, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &elems, &nulls, n);
	ids = palloc(sizeof(int64) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
		ids[i] = DatumGetInt64(elems[i]);
	return ids;
}

/*
 * The one way dlq builds JSON: text written with escape_json (or
 * dlq_json_quote for one string), parsed once into jsonb here.
 */
Jsonb *
dlq_jsonb(const char *json)
{
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));
}

/* A string as a JSON string literal. */
char *
dlq_json_quote(const char *s)
{
	StringInfoData buf;

	initStringInfo(&buf);
	escape_json(&buf, s);
	return buf.data;
}

/*
 * The default NOTIFY channel of a queue: "dlq_<queue>", or, when that would
 * pass 63 bytes or be the alert channel (queue "alerts"), a clipped queue
 * name with a hash of the whole name.
 */
char *
dlq_default_channel(const char *queue)
{
	int			len = strlen(queue);
	char	   *plain = psprintf("dlq_%s", queue);

	/* The hashed form also when the plain one would be the alert channel. */
	if (len + 4 <= DLQ_MAX_NAME_BYTES && strcmp(plain, DLQ_ALERT_CHANNEL) != 0)
		return plain;
	else
	{
		uint32		h = hash_bytes((const unsigned char *) queue, len);
		int			keep = pg_mbcliplen(queue, len, DLQ_MAX_NAME_BYTES - 4 - 9);

		return psprintf("dlq_%.*s_%08x", keep, queue, h);
	}
}

/* A fresh version 4 UUID, for request ids. */
Datum
dlq_new_request_id(void)
{
	pg_uuid_t  *uuid = palloc(sizeof(pg_uuid_t));

	if (!pg_strong_random(uuid->data, UUID_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random values")));
	uuid->data[6] = (uuid->data[6] & 0x0f) | 0x40;
	uuid->data[8] = (uuid->data[8] & 0x3f) | 0x80;
	return UUIDPGetDatum(uuid);
}

/*
 * Prepare a plan and keep it for the life of the backend.
 */
SPIPlanPtr
dlq_prepare_kept(const char *sql, int nargs, Oid *types)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

/*
 * Run a kept plan and check its result code: any other code than
 * expected_ret is a bug (a statement of another kind), never a user's
 * error, and raises an internal error.  Errors of the statement itself are
 * raised by SPI as they are.  Returns the number of rows processed.
 */
uint64
dlq_execute_kept(SPIPlanPtr plan, Datum *values, const char *nulls,
				 bool read_only, long tcount, int expected_ret)
{
	int			ret = SPI_execute_plan(plan, values, nulls, read_only, tcount);

	if (ret != expected_ret)
		elog(ERROR, "unexpected SPI result %s, expected %s",
			 SPI_result_code_string(ret), SPI_result_code_string(expected_ret));
	return SPI_processed;
}

/*
 * Copy the first column (a bigint, never NULL) of the rows the last SPI
 * statement returned into ids, which has room for them, free the result
 * and return how many there were.
 */
int
dlq_spi_ids(int64 *ids)
{
	int			n = (int) SPI_processed;

	for (int i = 0; i < n; i++)
	{
		bool		isnull;

		ids[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
											 SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);
	return n;
}

/* Whether dlq_execute_kept_retried runs its statement again after edata. */
static bool
execute_retryable(ErrorData *edata, int retry_flags)
{
	if (edata->sqlerrcode == ERRCODE_T_R_SERIALIZATION_FAILURE)
		return true;
	return (retry_flags & DLQ_RETRY_DEDUP) != 0 &&
		edata->sqlerrcode == ERRCODE_UNIQUE_VIOLATION &&
		edata->constraint_name != NULL &&
		strcmp(edata->constraint_name, DLQ_DEDUP_INDEX) == 0;
}

/*
 * dlq_execute_kept for a statement that may wait for a message another
 * transaction is closing (dlq_execute_kept_moved, dlq.h).  Closing moves a message into another partition
 * of dlq.messages (dlq--1.0--1.1.sql, "Storage"), and a statement that
 * waited for it then fails with a serialization failure even under READ
 * COMMITTED, where 1.0 found the message closed and went on.  Under READ
 * COMMITTED the statement runs in a subtransaction and, on that failure,
 * again with a new snapshot, which sees the message where it went: the
 * outcome of 1.0.  Under REPEATABLE READ or SERIALIZABLE the failure is the
 * caller's to retry, as a concurrent update always was.
 *
 * With DLQ_RETRY_DEDUP, a unique violation of the index of open dedup_keys
 * is retried the same way: a statement that gives a message a dedup_key
 * (dlq_move) and waited for a dlq_store of the same key, which committed,
 * sees that message with a new snapshot and leaves its own where it is.
 */
uint64
dlq_execute_kept_retried(SPIPlanPtr plan, Datum *values, const char *nulls,
						 long tcount, int expected_ret, int retry_flags)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;

	if (IsolationUsesXactSnapshot())
		return dlq_execute_kept(plan, values, nulls, false, tcount, expected_ret);
	for (int attempt = 1;; attempt++)
	{
		volatile uint64 n = 0;
		volatile bool moved = false;

		BeginInternalSubTransaction(NULL);
		MemoryContextSwitchTo(cxt);
		PG_TRY();
		{
			n = dlq_execute_kept(plan, values, nulls, false, tcount, expected_ret);
			ReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(cxt);
			CurrentResourceOwner = owner;
		}
		PG_CATCH();
		{
			ErrorData  *edata;

			/*
			 * Our subtransaction goes in any case, before the error goes on
			 * up: a caller's own (a PL/pgSQL EXCEPTION block) must find
			 * itself the current one.
			 */
			MemoryContextSwitchTo(cxt);
			edata = CopyErrorData();
			FlushErrorState();
			RollbackAndReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(cxt);
			CurrentResourceOwner = owner;
			if (!execute_retryable(edata, retry_flags) || attempt >= DLQ_MOVED_RETRIES)
				ReThrowError(edata);
			FreeErrorData(edata);
			moved = true;
		}
		PG_END_TRY();
		if (!moved)
			return n;
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * The same for a statement run once (SPI_execute_with_args): cold paths
 * whose plan is not worth keeping.
 */
uint64
dlq_execute_sql(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls,
				bool read_only, long tcount, int expected_ret)
{
	int			ret = SPI_execute_with_args(sql, nargs, types, values, nulls,
											read_only, tcount);

	if (ret != expected_ret)
		elog(ERROR, "unexpected SPI result %s, expected %s",
			 SPI_result_code_string(ret), SPI_result_code_string(expected_ret));
	return SPI_processed;
}

#if PG_VERSION_NUM < 150000
/*
 * PostgreSQL 15's helper for a materialized set-returning function: checks
 * the caller accepts a set and sets up rsinfo's tuplestore and descriptor.
 */
void
InitMaterializedSRF(FunctionCallInfo fcinfo, bits32 flags)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext old;
	TupleDesc	desc;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		!(rsinfo->allowedModes & SFRM_Materialize))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("set-valued function called in context that cannot accept a set")));
	old = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = tuplestore_begin_heap(true, false, work_mem);
	rsinfo->setDesc = CreateTupleDescCopy(desc);
	MemoryContextSwitchTo(old);
}
#endif

/*
 * Record one event in dlq.events.  The ids are kept only when there are at
 * most DLQ_AUDIT_MAX_IDS of them; the count always.
 */
void
dlq_audit(const char *kind, const char *actor, const char *queue,
		  Datum request_id, bool has_request_id,
		  int64 count, const int64 *ids, int nids, Jsonb *detail)
{
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};

	if (audit_plan == NULL)
	{
		Oid			types[7] = {TEXTOID, TEXTOID, TEXTOID, UUIDOID, INT8OID,
		INT8ARRAYOID, JSONBOID};
		audit_plan = dlq_prepare_kept("INSERT INTO dlq.events"
									  " (actor, kind, queue, request_id, message_count, message_ids, detail)"
									  " VALUES ($1, $2::dlq.event_kind, $3, $4, $5, $6, $7)",
									  7, types);
	}

	values[0] = CStringGetTextDatum(actor);
	values[1] = CStringGetTextDatum(kind);
	if (queue)
		values[2] = CStringGetTextDatum(queue);
	else
		nulls[2] = 'n';
	if (has_request_id)
		values[3] = request_id;
	else
		nulls[3] = 'n';
	values[4] = Int64GetDatum(count);
	if (ids != NULL && nids > 0 && nids <= DLQ_AUDIT_MAX_IDS)
	{
		Datum	   *elems = palloc(sizeof(Datum) * nids);

		for (int i = 0; i < nids; i++)
			elems[i] = Int64GetDatum(ids[i]);
		values[5] = PointerGetDatum(construct_array(elems, nids, INT8OID, 8,
													FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	}
	else
		nulls[5] = 'n';
	if (detail)
		values[6] = JsonbPGetDatum(detail);
	else
		nulls[6] = 'n';

	dlq_execute_kept(audit_plan, values, nulls, false, 0, SPI_OK_INSERT);
}

/* Add one id to a tally: the count always, the id while there is room. */
void
dlq_tally_add(DlqIdTally *tally, int64 id)
{
	if (tally->count < DLQ_AUDIT_MAX_IDS)
		tally->ids[tally->count] = id;
	tally->count++;
}

/* One audit event for a tally, unless it is empty. */
void
dlq_tally_audit(const DlqIdTally *tally, const char *kind, const char *actor,
				const char *queue, Datum request_id, Jsonb *detail)
{
	int64		sorted[DLQ_AUDIT_MAX_IDS];
	int			n = tally->count <= DLQ_AUDIT_MAX_IDS ? (int) tally->count : 0;

	if (tally->count == 0)
		return;
	/* RETURNING hands rows back in no particular order. */
	memcpy(sorted, tally->ids, sizeof(int64) * n);
	for (int i = 1; i < n; i++)
		for (int j = i; j > 0 && sorted[j - 1] > sorted[j]; j--)
		{
			int64		t = sorted[j];

			sorted[j] = sorted[j - 1];
			sorted[j - 1] = t;
		}
	dlq_audit(kind, actor, queue, request_id, true, tally->count, sorted, n, detail);
}

/*
 * Find or add the entry of a queue in a list of DlqQueueTally (for
 * discard, resolve and ack, which audit one event per queue).
 */
DlqQueueTally *
dlq_queue_tally(List **tallies, const char *queue)
{
	ListCell   *lc;
	DlqQueueTally *t;

	foreach(lc, *tallies)
	{
		t = (DlqQueueTally *) lfirst(lc);
		if (strcmp(t->queue, queue) == 0)
			return t;
	}
	t = palloc0(sizeof(DlqQueueTally));
	t->queue = pstrdup(queue);
	*tallies = lappend(*tallies, t);
	return t;
}

/*
 * Add the rows of the last SPI result, (queue text, message_id bigint), to
 * per-queue tallies.
 */
int64
dlq_queue_tally_rows(List **tallies)
{
	DlqQueueTally *t = NULL;

	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		bool		isnull;
		char	   *queue = TextDatumGetCString(SPI_getbinval(row, SPI_tuptable->tupdesc, 1,
															  &isnull));

		if (t == NULL || strcmp(t->queue, queue) != 0)
			t = dlq_queue_tally(tallies, queue);
		dlq_tally_add(&t->tally,
					  DatumGetInt64(SPI_getbinval(row, SPI_tuptable->tupdesc, 2, &isnull)));
	}
	return (int64) SPI_processed;
}
