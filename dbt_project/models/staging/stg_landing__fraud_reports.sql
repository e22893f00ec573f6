{{ config(partition_column='report_date') }}

with source as (

    select * from {{ lake_partitions('landing', 'fraud_reports') }}
    where date >= {{ window_start() }} and date < {{ window_end() }}

),

renamed as (

    select
        transaction_id,
        reported_at,
        date as report_date,
        extras,
        source_file,
        ingest_run_id
    from source

)

select * from renamed
