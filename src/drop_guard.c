/*-------------------------------------------------------------------------
 *
 * drop_guard.c
 *	  DROP EXTENSION dlq keeps messages unless told otherwise: the
 *	  ddl_command_start event trigger dlq_drop_guard refuses a command that
 *	  would drop the extension while dlq.messages holds messages, unless
 *	  dlq.drop_discards_messages is on.
 *
 *	  Commands that drop the extension: DROP EXTENSION dlq; DROP SCHEMA ...
 *	  CASCADE of the schema the extension lives in (its other dependencies
 *	  are pinned); DROP OWNED BY its owner.  Dropping one of its objects
 *	  directly (DROP TABLE dlq.messages, DROP SCHEMA dlq CASCADE) is refused
 *	  by PostgreSQL itself.  The trigger is created WHEN TAG IN ('DROP
 *	  EXTENSION', 'DROP SCHEMA', 'DROP OWNED'), so other DDL never calls it
 *	  and never loads the library; for those three the parse tree decides
 *	  before any catalog or table is read.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "commands/event_trigger.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "nodes/parsenodes.h"
#include "utils/acl.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"

#include "dlq.h"

/* The schema and the owner of extension dlq; false when it is not installed. */
static bool
guard_extension(Oid *nspid, Oid *owner)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	bool		found = false;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("dlq"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		Form_pg_extension ext = (Form_pg_extension) GETSTRUCT(tup);

		*nspid = ext->extnamespace;
		*owner = ext->extowner;
		found = true;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

/*
 * Would this command drop extension dlq?  Returns the command's words for
 * the error detail, or NULL.
 */
static const char *
guard_drops_extension(Node *parsetree)
{
	Oid			nspid;
	Oid			owner;
	ListCell   *lc;

	if (IsA(parsetree, DropStmt))
	{
		DropStmt   *stmt = (DropStmt *) parsetree;

		if (stmt->removeType == OBJECT_EXTENSION)
		{
			foreach(lc, stmt->objects)
				if (strcmp(strVal(lfirst(lc)), "dlq") == 0)
					return "DROP EXTENSION";
		}
		else if (stmt->removeType == OBJECT_SCHEMA && stmt->behavior == DROP_CASCADE &&
				 guard_extension(&nspid, &owner))
		{
			foreach(lc, stmt->objects)
				if (get_namespace_oid(strVal(lfirst(lc)), true) == nspid)
					return "DROP SCHEMA ... CASCADE";
		}
	}
	else if (IsA(parsetree, DropOwnedStmt) && guard_extension(&nspid, &owner))
	{
		foreach(lc, ((DropOwnedStmt *) parsetree)->roles)
			if (get_rolespec_oid(lfirst(lc), true) == owner)
				return "DROP OWNED";
	}
	return NULL;
}

/* Does dlq.messages hold any row?  Read as the extension owner. */
static bool
guard_has_messages(void)
{
	Oid			nsp = get_namespace_oid("dlq", true);
	DlqOwnerContext owner;
	bool		isnull;
	bool		found;

	if (!OidIsValid(nsp) || !OidIsValid(get_relname_relid("messages", nsp)))
		return false;

	dlq_become_owner(&owner);
	SPI_connect();
	if (SPI_execute("SELECT EXISTS (SELECT FROM dlq.messages)", true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read dlq.messages");
	found = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	dlq_restore_caller(&owner);
	return found;
}

PG_FUNCTION_INFO_V1(dlq_drop_guard);

/*
 * dlq.drop_guard() returns event_trigger, on ddl_command_start.
 */
Datum
dlq_drop_guard(PG_FUNCTION_ARGS)
{
	EventTriggerData *trigdata;
	const char *command;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_EVENT_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"dlq_drop_guard\" must be fired by an event trigger")));
	trigdata = (EventTriggerData *) fcinfo->context;

	if (dlq_drop_discards_messages)
		PG_RETURN_VOID();
	command = guard_drops_extension(trigdata->parsetree);
	if (command == NULL || !guard_has_messages())
		PG_RETURN_VOID();

	ereport(ERROR,
			(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
			 errmsg("cannot drop extension \"dlq\" while it holds messages"),
			 errdetail("This %s would drop extension \"dlq\", and with it every message in dlq.messages and the audit trail in dlq.events.",
					   command),
			 errhint("Discard the messages first, or SET dlq.drop_discards_messages = on to delete them with the extension.")));
	PG_RETURN_VOID();			/* keep compiler quiet */
}
