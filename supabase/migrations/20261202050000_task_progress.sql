-- s3seg: task progress, live status for Supabase Realtime.
--
-- frames_done / frames_total: how far a running task is (a video's processed frames out of those it will
-- process; an image task is one step). frames_total is 0 while unknown. The server's worker writes them
-- with each heartbeat (every update also moves updated_at, which is how the server's sweep tells a running
-- task from one whose worker died); a task that runs again (requeued) starts from frames_done = 0.
-- Signed-in users read them (table-level select) but cannot write them: authenticated has column-level
-- insert/update privileges only on the columns named in 20261122010000_segmentation_tasks.sql.

alter table public.segmentation_results
    add column frames_done integer not null default 0 check (frames_done >= 0),
    add column frames_total integer not null default 0 check (frames_total >= 0);

comment on column public.segmentation_results.frames_done is
    'progress of a running task: frames (steps) processed so far; 0 again when the task is run again.';
comment on column public.segmentation_results.frames_total is
    'progress of a running task: frames (steps) it will process; 0 while unknown.';

-- Apps that subscribe to the table with Supabase Realtime (postgres_changes) see each status and progress
-- change; row-level security still decides which rows a subscriber receives. Guarded: a plain PostgreSQL
-- (tests, self-hosting without Realtime) has no supabase_realtime publication and migrates all the same.
do $$
begin
    if exists (select 1 from pg_publication where pubname = 'supabase_realtime')
       and not exists (
           select 1 from pg_publication_tables
            where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = 'segmentation_results'
       ) then
        alter publication supabase_realtime add table public.segmentation_results;
    end if;
end
$$;
